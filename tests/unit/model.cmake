pd_unit_test(test_model pdmodel)
set_tests_properties(test_model PROPERTIES TIMEOUT 1200)
# The engine tests again on the portable kernels (PDSERVE_PORTABLE=1: reference kernels, nothing prepacked
# except W8A8's int8 form).
add_test(NAME test_model_portable COMMAND test_model)
set_tests_properties(test_model_portable PROPERTIES ENVIRONMENT "PDSERVE_PORTABLE=1" TIMEOUT 1200)
# ... and on the AVX2 table (CPUs without AVX-512: PDSERVE_KERNELS=avx2 picks it below the detected one; golden
# logits, prefill chunking bit for bit, decode = prefill). Where the CPU lacks AVX2 it runs the detected table.
add_test(NAME test_model_avx2 COMMAND test_model)
set_tests_properties(test_model_avx2 PROPERTIES ENVIRONMENT "PDSERVE_KERNELS=avx2" TIMEOUT 1200)
