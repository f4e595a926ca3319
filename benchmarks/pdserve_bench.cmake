# pdserve-bench: the serving benchmark (vLLM `bench serve` style) and its compare mode; sources in pdserve_bench/.
add_executable(pdserve-bench ${CMAKE_CURRENT_SOURCE_DIR}/pdserve_bench/main.c
               ${CMAKE_CURRENT_SOURCE_DIR}/pdserve_bench/client.c ${CMAKE_CURRENT_SOURCE_DIR}/pdserve_bench/dataset.c
               ${CMAKE_CURRENT_SOURCE_DIR}/pdserve_bench/report.c ${CMAKE_CURRENT_SOURCE_DIR}/pdserve_bench/plot.c)
target_link_libraries(pdserve-bench PRIVATE pdcommon PkgConfig::LIBEVENT m)
