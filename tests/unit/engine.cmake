pd_unit_test(test_engine pdmodel)
