# kvtransfer process tests: two or more real kv_peer processes on loopback (or across network namespaces),
# driven by kv_test.py. Every scenario has a hard timeout and kills its children on exit.
add_executable(kv_peer integration/kv_peer.c)
target_link_libraries(kv_peer PRIVATE pdkv)
find_package(Python3 COMPONENTS Interpreter)
if(Python3_FOUND)
  set(KV_TEST ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/integration/kv_test.py --peer $<TARGET_FILE:kv_peer>)
  foreach(tr sm smtcp tcp)
    foreach(sc pair many_senders many_receivers kill_sender kill_receiver cancel)
      # A sender SIGKILLed in the middle of writing a posix FIFO message can wedge the receiver's FIFO
      # for every other sender (UCX 1.13 mm transport): with shared memory only, that scenario is not
      # a supported deployment (see docs/kvtransfer.md); smtcp covers shared-memory data with kills.
      if(tr STREQUAL "sm" AND sc STREQUAL "kill_sender")
        continue()
      endif()
      add_test(NAME kv_${sc}_${tr} COMMAND ${KV_TEST} --transport ${tr} ${sc})
      set_tests_properties(kv_${sc}_${tr} PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77 LABELS kvtransfer)
    endforeach()
    add_test(NAME kv_pair_forced_${tr} COMMAND ${KV_TEST} --transport ${tr} --proto put pair)
    set_tests_properties(kv_pair_forced_${tr} PROPERTIES TIMEOUT 180 LABELS kvtransfer)
  endforeach()
  # Receivers whose regions come from kv_region_alloc (as decode's pool does): over shared memory the
  # sender maps them and copies directly (streaming stores; --small: regions below the cache size, plain
  # copies); over tcp, or with AM, the same regions go through UCX as before.
  foreach(tr sm smtcp)
    foreach(sc pair many_senders many_receivers kill_sender kill_receiver cancel)
      if(tr STREQUAL "sm" AND sc STREQUAL "kill_sender")
        continue()
      endif()
      add_test(NAME kv_${sc}_${tr}_alloc COMMAND ${KV_TEST} --transport ${tr} --region alloc ${sc})
      set_tests_properties(kv_${sc}_${tr}_alloc PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77 LABELS kvtransfer)
    endforeach()
  endforeach()
  add_test(NAME kv_pair_small_sm_alloc COMMAND ${KV_TEST} --transport sm --region alloc --small pair)
  add_test(NAME kv_pair_am_sm_alloc COMMAND ${KV_TEST} --transport sm --region alloc --proto am pair)
  add_test(NAME kv_pair_tcp_alloc COMMAND ${KV_TEST} --transport tcp --region alloc pair)
  set_tests_properties(kv_pair_small_sm_alloc kv_pair_am_sm_alloc kv_pair_tcp_alloc PROPERTIES TIMEOUT 180
                       LABELS kvtransfer)
  # Interrupt moderation (kv_params_t.linger): an idle receiver sleeps again after a stream, and the path
  # without it (linger 0: arm after every event) still delivers.
  add_test(NAME kv_idle_smtcp_alloc COMMAND ${KV_TEST} --transport smtcp --region alloc idle)
  add_test(NAME kv_idle_tcp COMMAND ${KV_TEST} --transport tcp idle)
  add_test(NAME kv_pair_nolinger_sm_alloc COMMAND ${KV_TEST} --transport sm --region alloc --linger 0 pair)
  add_test(NAME kv_pair_nolinger_tcp COMMAND ${KV_TEST} --transport tcp --linger 0 pair)
  set_tests_properties(kv_idle_smtcp_alloc kv_idle_tcp kv_pair_nolinger_sm_alloc kv_pair_nolinger_tcp PROPERTIES
                       TIMEOUT 180 LABELS kvtransfer)
  add_test(NAME kv_pair_am_sm COMMAND ${KV_TEST} --transport sm --proto am pair)
  add_test(NAME kv_netns_tcp COMMAND ${KV_TEST} --transport tcp netns)
  set_tests_properties(kv_pair_am_sm kv_netns_tcp PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77 LABELS kvtransfer)
endif()
