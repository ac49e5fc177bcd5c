//! Pure tests of the planner: no I/O.
