pd_unit_test(test_model pdmodel)
set_tests_properties(test_model PROPERTIES TIMEOUT 1200)
# The engine tests again on the portable kernels (PDSERVE_PORTABLE=1: reference kernels, nothing prepacked
# except W8A8's int8 form).
add_test(NAME test_model_portable COMMAND test_model)
set_tests_properties(test_model_portable PROPERTIES ENVIRONMENT "PDSERVE_PORTABLE=1" TIMEOUT 1200)
