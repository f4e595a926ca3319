# Multi-rank instances (dist/): mpirun on loopback, greedy equality with one process, bad rank counts, kill -9.
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  find_package(Python3 COMPONENTS Interpreter REQUIRED)
  add_test(NAME dist_integration
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/dist_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny --fixtures ${PD_FIXTURES}
                   --demo ${CMAKE_BINARY_DIR}/models/demo-v3
                   --demo-tarball ${CMAKE_SOURCE_DIR}/../shared/models/demo-v3.tar.xz)
  set_tests_properties(dist_integration PROPERTIES FIXTURES_REQUIRED "tiny_model;demo_model" TIMEOUT 900)
endif()
