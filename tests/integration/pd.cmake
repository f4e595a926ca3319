# The trained demo checkpoint (models/demo-v3.tar.xz), unpacked once into the build tree for the tests that use it
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/models)
add_test(NAME demo_model_unpack
         COMMAND ${CMAKE_COMMAND} -E chdir ${CMAKE_BINARY_DIR}/models
                 ${CMAKE_COMMAND} -E tar xJf ${CMAKE_SOURCE_DIR}/models/demo-v3.tar.xz)
set_tests_properties(demo_model_unpack PROPERTIES FIXTURES_SETUP demo_model TIMEOUT 300)
# Process-level tests of the serving path: the real executables on loopback ports they pick.
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
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
  pd_py_test(pd_integration pd_test.py TIMEOUT 900)
endif()
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  # --cluster-secret-file: signed registration and internal calls; unsigned, forged and stale ones refused
  pd_py_test(cluster_auth auth_test.py)
endif()
if(TARGET pdserve-router AND TARGET pdserve-decode)
  # 1500 idle half-sent requests at routers limited to 1024 descriptors: the connection limit, the read and idle
  # timeouts, the accept pause; no log flood, serving again after it
  pd_py_test(router_fd_flood flood_test.py)
  # HTTPS on the public API: the OpenAI client through a test CA; plain HTTP to the TLS port gets no service
  pd_py_test(router_tls tls_test.py)
endif()
if(TARGET pdserve-router)
  pd_py_test(readme_examples readme_test.py MODEL ${CMAKE_BINARY_DIR}/models/demo-v3 FIXTURES demo_model
             ARGS --demo-tarball ${CMAKE_SOURCE_DIR}/models/demo-v3.tar.xz --readme ${CMAKE_SOURCE_DIR}/README.md)
endif()
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  pd_py_test(fault_tolerance fault_test.py TIMEOUT 600 ARGS --disconnects 1000)
endif()
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  pd_py_test(independent_scaling scaling_test.py)
endif()
if(TARGET pdserve-router AND TARGET pdserve-prefill AND TARGET pdserve-decode)
  # scripts/serve.sh (the README's main job) on ports the test picks: serves, restarts a killed instance, stops on
  # Ctrl-C, and gives up with an error on an instance that cannot start.
  pd_py_test(serve_script serve_test.py TIMEOUT 600 ARGS --source ${CMAKE_SOURCE_DIR})
endif()
