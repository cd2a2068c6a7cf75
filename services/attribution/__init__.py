"""Attribution service: which outreach produced which orders, against the control group (not
written yet; the package holds its place in the layout)."""
