# The Prometheus metric registry (libpdcommon).
pd_unit_test(test_metrics pdcommon)
