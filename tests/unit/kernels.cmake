pd_unit_test(test_kernels pdkernels)
