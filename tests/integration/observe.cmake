# Observability: /metrics of the three executables through promtool (installed by scripts/test.sh), pdserve-bench against a real
# deployment and its compare mode, the router's dashboard in headless Chromium.
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  pd_py_test(metrics_integration metrics_test.py ARGS --require-promtool)
endif()
if(TARGET pdserve-bench AND TARGET pdserve-router)
  pd_py_test(bench_integration bench_test.py TIMEOUT 600)
endif()
if(TARGET pdserve-router)
  # needs chromium and chromium-driver (PD_TEST_TOOLS=1 scripts/setup.sh); fails with a clear message without them
  pd_py_test(dashboard_chromium dashboard_test.py ARGS --screenshot ${CMAKE_BINARY_DIR}/dashboard.png)
endif()
