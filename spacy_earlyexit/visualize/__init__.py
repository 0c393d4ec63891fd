"""Pictures of early exit: the exit layer of every token as HTML
(render, render_file, exit_spans) and the speed/accuracy sweep as a plot
(plot_sweep; needs matplotlib, imported only when called)."""
from .render import render
from .render_file import render_file
from .spans import exit_span_colours, exit_spans
from .sweep_plot import pareto_front, plot_sweep

__all__ = ["render", "render_file", "exit_spans", "exit_span_colours", "plot_sweep", "pareto_front"]
