# The machine loops (peak multiply-adds, streaming read) of kernel_bench and spec_bench, one file per instruction set.
set(PD_BENCH_PEAK ${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench_peak.c ${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench_peak_avx2.c
    ${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench_peak_avx512.c)
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench_peak_avx512.c PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512bf16;-O3")
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench_peak_avx2.c PROPERTIES COMPILE_OPTIONS
  "-mavx2;-mfma;-O3")
# kernel_bench: GEMM/GEMV/attention throughput against this machine's measured peak, bandwidth and OpenBLAS.
add_executable(kernel_bench ${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench.c ${PD_BENCH_PEAK})
target_link_libraries(kernel_bench PRIVATE pdmodel pdkernels pdcommon)
list(APPEND PD_BENCH_OWNED ${CMAKE_CURRENT_SOURCE_DIR}/kernel_bench.c ${PD_BENCH_PEAK})
