"""Convex solvers shared by several weightings: barrier method, cone dual, dual-cone QP."""
