"""Report: serialise the findings and render them as report.json, report.md, index.html and
junit.xml.
"""
