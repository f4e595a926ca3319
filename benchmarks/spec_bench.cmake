# spec_bench: MTP speculative decoding throughput on mdl_engine; links kernel_bench's streaming-read loop so that
# the decode step's weight bandwidth is compared with the machine's in the same run.
add_executable(spec_bench ${CMAKE_CURRENT_SOURCE_DIR}/spec_bench.c ${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench_peak.c)
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench_peak.c PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512bf16;-O3")
target_link_libraries(spec_bench PRIVATE pdmodel pdkernels pdcommon Threads::Threads)
target_compile_definitions(spec_bench PRIVATE PD_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
list(APPEND PD_BENCH_OWNED ${CMAKE_CURRENT_SOURCE_DIR}/spec_bench.c)
