# kernel_bench: GEMM/GEMV/attention throughput against this machine's measured peak, bandwidth and OpenBLAS.
add_executable(kernel_bench ${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench.c ${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench_peak.c)
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench_peak.c PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512bf16;-O3")
target_link_libraries(kernel_bench PRIVATE pdmodel pdkernels pdcommon)
list(APPEND PD_BENCH_OWNED ${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench.c ${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench_peak.c)
