# libFuzzer targets (configure with CC=clang -DPD_FUZZ=ON -DPD_SANITIZE=address,undefined). Each runs for
# PD_FUZZ_SECONDS under CTest (label "fuzz") from its seed corpus; longer runs: build-fuzz/tests/fuzz_<name> DIR.
set(PD_FUZZ_SECONDS 15 CACHE STRING "seconds each fuzz target runs under CTest")
foreach(t safetensors tokenizer chat_template yaml_opts)
  add_executable(fuzz_${t} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_${t}.c)
  target_link_libraries(fuzz_${t} PRIVATE pdmodel pdcommon)
  target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
  target_compile_definitions(fuzz_${t} PRIVATE PD_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  set(corpus ${CMAKE_BINARY_DIR}/fuzz-corpus/${t})
  file(MAKE_DIRECTORY ${corpus})
  add_test(NAME fuzz_${t}
           COMMAND fuzz_${t} -max_total_time=${PD_FUZZ_SECONDS} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
                   ${corpus} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus/${t})
  set_tests_properties(fuzz_${t} PROPERTIES LABELS fuzz TIMEOUT 600
                       ENVIRONMENT "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1;ASAN_OPTIONS=detect_leaks=1")
endforeach()
