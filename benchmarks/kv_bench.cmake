# kv_bench: libpdkv bandwidth between two processes; benchmarks/kv_bench.sh compares it with ucx_perftest.
add_executable(kv_bench ${CMAKE_CURRENT_SOURCE_DIR}/kv_bench.c)
target_link_libraries(kv_bench PRIVATE pdkv)
list(APPEND PD_BENCH_OWNED ${CMAKE_CURRENT_SOURCE_DIR}/kv_bench.c)
