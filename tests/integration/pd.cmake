# The trained demo checkpoint (models/demo-v3.tar.xz), unpacked once into the build tree for the tests that use it
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/models)
add_test(NAME demo_model_unpack
         COMMAND ${CMAKE_COMMAND} -E chdir ${CMAKE_BINARY_DIR}/models
                 ${CMAKE_COMMAND} -E tar xJf ${CMAKE_SOURCE_DIR}/models/demo-v3.tar.xz)
set_tests_properties(demo_model_unpack PROPERTIES FIXTURES_SETUP demo_model TIMEOUT 300)
# Process-level tests of the serving path: the real executables on loopback ports they pick.
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  find_package(Python3 COMPONENTS Interpreter REQUIRED)
  find_program(PD_NODE node REQUIRED)
  add_test(NAME model_tiny_generate
           COMMAND pdserve-model generate --preset tiny --out ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(model_tiny_generate PROPERTIES FIXTURES_SETUP tiny_model TIMEOUT 300)
  # --fp8 on a preset whose config has no weight_block_size (every one but v3) used to die of SIGFPE: it writes
  # 128x128 scale blocks, and the checkpoint loads and runs
  add_test(NAME model_generate_fp8
           COMMAND sh -c "set -e; d=${CMAKE_BINARY_DIR}/models/tiny-fp8-1l
             \"$1\" generate --preset tiny --fp8 --set num_hidden_layers=1 --out $d
             grep -q '\"weight_block_size\":.*128, 128' $d/config.json
             \"$1\" inspect $d | grep -qi f8_e4m3
             \"$1\" run --model $d --tokens 1,2,3 --max-tokens 4 --ignore-eos > /dev/null
             rm -rf $d" sh $<TARGET_FILE:pdserve-model>)
  set_tests_properties(model_generate_fp8 PROPERTIES TIMEOUT 300)
  add_test(NAME pd_integration
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/pd_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(pd_integration PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 900)
endif()
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  # --cluster-secret-file: signed registration and internal calls; unsigned, forged and stale ones refused
  add_test(NAME cluster_auth
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/auth_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(cluster_auth PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 300)
endif()
if(TARGET pdserve-router AND TARGET pdserve-decode)
  # 1500 idle half-sent requests at routers limited to 1024 descriptors: the connection limit, the read and idle
  # timeouts, the accept pause; no log flood, serving again after it
  add_test(NAME router_fd_flood
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/flood_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(router_fd_flood PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 300)
  # HTTPS on the public API: the OpenAI client through a test CA; plain HTTP to the TLS port gets no service
  add_test(NAME router_tls
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/tls_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(router_tls PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 300)
endif()
if(TARGET pdserve-router)
  add_test(NAME readme_examples
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/readme_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/demo-v3
                   --demo-tarball ${CMAKE_SOURCE_DIR}/models/demo-v3.tar.xz --readme ${CMAKE_SOURCE_DIR}/README.md)
  set_tests_properties(readme_examples PROPERTIES FIXTURES_REQUIRED demo_model TIMEOUT 300)
endif()
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  add_test(NAME fault_tolerance
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/fault_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny --disconnects 1000)
  set_tests_properties(fault_tolerance PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 600)
endif()
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  add_test(NAME independent_scaling
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/scaling_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(independent_scaling PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 300)
endif()
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  # scripts/serve.sh (the README's main job) on ports the test picks: serves, restarts a killed instance, stops on
  # Ctrl-C, and gives up with an error on an instance that cannot start.
  add_test(NAME serve_script
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/serve_test.py
                   --build ${CMAKE_BINARY_DIR} --model ${CMAKE_BINARY_DIR}/models/tiny --source ${CMAKE_SOURCE_DIR})
  set_tests_properties(serve_script PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 600)
endif()
