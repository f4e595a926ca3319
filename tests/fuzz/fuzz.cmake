# libFuzzer targets (configure with CC=clang -DPD_FUZZ=ON -DPD_SANITIZE=address,undefined). Under CTest (label
# "fuzz") each runs a fixed number of inputs from a fixed seed, so a given tree passes or fails the same way every
# time (about 10-20 s each here); open-ended runs: build-fuzz/tests/fuzz_<name> -max_total_time=600 DIR.
set(PD_FUZZ_RUNS_safetensors 40000)
set(PD_FUZZ_RUNS_tokenizer 100000)
set(PD_FUZZ_RUNS_chat_template 200000)
set(PD_FUZZ_RUNS_yaml_opts 100000)
set(PD_FUZZ_RUNS_router_request 10000)
set(PD_FUZZ_RUNS_http 1000000) # a live listener on 127.0.0.1, one connection per input
set(PD_FUZZ_ARGS_http -dict=${CMAKE_CURRENT_SOURCE_DIR}/fuzz/http.dict -max_len=4096)
set(PD_FUZZ_ARGS_router_request -dict=${CMAKE_CURRENT_SOURCE_DIR}/fuzz/router_request.dict) # the body's field names
set(PD_FUZZ_LIBS_safetensors pdmodel) # each target links the library it fuzzes
set(PD_FUZZ_LIBS_tokenizer pdtext)
set(PD_FUZZ_LIBS_chat_template pdtext)
set(PD_FUZZ_LIBS_yaml_opts pdcommon)
set(PD_FUZZ_LIBS_router_request rtrequest)
set(PD_FUZZ_LIBS_http pdcommon)
foreach(t safetensors tokenizer chat_template yaml_opts router_request http)
  add_executable(fuzz_${t} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_${t}.c)
  target_link_libraries(fuzz_${t} PRIVATE ${PD_FUZZ_LIBS_${t}} pdcommon)
  target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
  target_compile_definitions(fuzz_${t} PRIVATE PD_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  set(corpus ${CMAKE_BINARY_DIR}/fuzz-corpus/${t}) # grows as libFuzzer finds inputs; the seed corpus is read-only
  file(MAKE_DIRECTORY ${corpus})
  add_test(NAME fuzz_${t}
           COMMAND fuzz_${t} -seed=1 -runs=${PD_FUZZ_RUNS_${t}} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
                   ${PD_FUZZ_ARGS_${t}}
                   ${corpus} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${t})
  set_tests_properties(fuzz_${t} PROPERTIES LABELS fuzz TIMEOUT 600
                       ENVIRONMENT "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1;ASAN_OPTIONS=detect_leaks=1")
endforeach()
