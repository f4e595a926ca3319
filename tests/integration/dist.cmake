# Multi-rank instances (dist/): mpirun on loopback, greedy equality with one process, bad rank counts, kill -9.
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  pd_py_test(dist_integration dist_test.py TIMEOUT 900 FIXTURES demo_model
             ARGS --fixtures ${PD_FIXTURES} --demo ${CMAKE_BINARY_DIR}/models/demo-v3
                  --demo-tarball ${CMAKE_SOURCE_DIR}/../shared/models/demo-v3.tar.xz)
endif()
