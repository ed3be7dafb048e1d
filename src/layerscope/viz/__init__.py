"""Reading results at a glance: bar charts, module heatmaps, loss curves and comparisons between
methods. Everything here reads only ``LayerImportance`` results."""
