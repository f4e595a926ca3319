# The instance library: its request table.
pd_unit_test(test_inst_reqtab pdinst)
