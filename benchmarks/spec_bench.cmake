# spec_bench: MTP speculative decoding throughput on mdl_engine; links kernel_bench's streaming-read loop so that
# the decode step's weight bandwidth is compared with the machine's in the same run.
add_executable(spec_bench ${CMAKE_CURRENT_SOURCE_DIR}/spec_bench.c ${PD_BENCH_PEAK})
target_link_libraries(spec_bench PRIVATE pdtext pdmodel pdkernels pdcommon Threads::Threads)
target_compile_definitions(spec_bench PRIVATE PD_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
list(APPEND PD_BENCH_OWNED ${CMAKE_CURRENT_SOURCE_DIR}/spec_bench.c)
