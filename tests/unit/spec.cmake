# Speculative decoding: greedy equality, lossless sampling (chi-square), captured sizes. Uses the trained demo
# model from ${CMAKE_SOURCE_DIR}/../shared/models/demo-v3.tar.xz (unpacked into the build directory; missing fails).
pd_unit_test(test_spec pdmodel)
set_tests_properties(test_spec PROPERTIES TIMEOUT 1800)
