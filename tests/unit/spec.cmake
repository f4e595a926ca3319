# Speculative decoding: greedy equality, lossless sampling (chi-square), captured sizes. Uses the trained demo
# model from ${CMAKE_SOURCE_DIR}/../shared/models/demo-v3.tar.xz (unpacked into the build directory; missing fails).
# One test per case: the demo case alone takes about 5 min under the sanitizers, and run as one test the suite was
# the sanitizer pass's last 20 min on a loaded machine.
pd_unit_test(test_spec pdmodel CASES options greedy ngram sampling demo)
set_tests_properties(test_spec_options test_spec_greedy test_spec_ngram test_spec_sampling test_spec_demo
                     PROPERTIES TIMEOUT 1500)
set_tests_properties(test_spec_demo PROPERTIES FIXTURES_REQUIRED demo_model) # unpacked by demo_model_unpack
# The same promises on the portable kernels (PDSERVE_PORTABLE=1): verify rows must get the bits decode steps get
# there too (krn_linear's fixed-order products; the sampling case failed when they went through sgemm). Not in the
# sanitizer build: there the portable dot products run uninstrumented-slow (over 20 min of CPU); test_kernels_portable
# and test_model_portable cover those kernels' memory safety.
if(NOT PD_SANITIZE)
  foreach(case greedy sampling)
    add_test(NAME test_spec_portable_${case} COMMAND test_spec)
    set_tests_properties(test_spec_portable_${case} PROPERTIES ENVIRONMENT "PDSERVE_PORTABLE=1;CK_RUN_CASE=${case}"
                         TIMEOUT 1200)
  endforeach()
endif()
# A replayed decode step allocates nothing: jemalloc's per-thread counters on the engine thread and the kernel pool.
# Not in the sanitizer build, where the sanitizer's allocator serves malloc and jemalloc's counters would stay still.
if(NOT PD_SANITIZE)
  pd_unit_test(test_step_alloc pdmodel PkgConfig::JEMALLOC)
endif()
# Speculative decoding's promises on the AVX2 table too (greedy equality local and PD, the chi-square test).
foreach(case greedy sampling)
  add_test(NAME test_spec_avx2_${case} COMMAND test_spec)
  set_tests_properties(test_spec_avx2_${case} PROPERTIES ENVIRONMENT "PDSERVE_KERNELS=avx2;CK_RUN_CASE=${case}"
                       TIMEOUT 1200)
endforeach()
