# The prefill request's state machine through every order of events.
pd_unit_test(test_preq_states pdpreq)
