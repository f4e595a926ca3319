# The decode request's state machine driven through every order of its events (no UCX, no processes).
if(TARGET pddreq)
  pd_unit_test(test_dreq_states pddreq)
endif()
