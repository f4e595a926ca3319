pd_unit_test(test_model pdmodel)
set_tests_properties(test_model PROPERTIES TIMEOUT 1200)
