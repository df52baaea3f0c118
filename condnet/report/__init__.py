"""The reproduction report: Table 3, Figure 5 and Table 4 from finished runs."""

from condnet.report.build import build_report

__all__ = ["build_report"]
