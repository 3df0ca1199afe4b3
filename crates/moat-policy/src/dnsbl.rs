//! DNS block and allow lists, weighted per zone and return code.
