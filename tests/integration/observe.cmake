# Observability: /metrics of the three executables through promtool (installed by scripts/test.sh), pdserve-bench against a real
# deployment and its compare mode, the router's dashboard in headless Chromium.
find_package(Python3 COMPONENTS Interpreter REQUIRED)
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  add_test(NAME metrics_integration
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/metrics_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny --require-promtool)
  set_tests_properties(metrics_integration PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 300)
endif()
if(TARGET pdserve-bench AND TARGET pdserve-router)
  add_test(NAME bench_integration
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/bench_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(bench_integration PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 600)
endif()
if(TARGET pdserve-router)
  # needs chromium and chromium-driver (PD_TEST_TOOLS=1 scripts/setup.sh); fails with a clear message without them
  add_test(NAME dashboard_chromium
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/dashboard_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny
                   --screenshot ${CMAKE_BINARY_DIR}/dashboard.png)
  set_tests_properties(dashboard_chromium PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 300)
endif()
