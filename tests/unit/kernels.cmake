pd_unit_test(test_kernels pdkernels)
target_sources(test_kernels PRIVATE unit/test_kernels_paths.c) # the "paths" case; test_kernels.c has main
# The same tests on the portable path (no AVX2/AVX-512 tables) and with an odd thread count. (Every table the CPU
# has is tested in each run: the tests force each in turn.)
add_test(NAME test_kernels_portable COMMAND test_kernels)
set_tests_properties(test_kernels_portable PROPERTIES ENVIRONMENT "PDSERVE_PORTABLE=1")
add_test(NAME test_kernels_threads3 COMMAND test_kernels)
set_tests_properties(test_kernels_threads3 PROPERTIES ENVIRONMENT "PDSERVE_THREADS=3")
