"""Execution: the scheduler runs every (cell, repeat) through an executor, cached, locked and
resumable.
"""
