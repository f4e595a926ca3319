# libpdkv unit tests.
pd_unit_test(test_kv_desc pdkv)
