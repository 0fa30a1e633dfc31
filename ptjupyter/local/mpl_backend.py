"""matplotlib backend of a rank (``MPLBACKEND=module://ptjupyter.local.mpl_backend``): Agg, and ``plt.show()``
displays every open figure in the cell as PNG (see ``rich.py``), then closes them."""
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def show(*args, **kwargs) -> None:
    from matplotlib._pylab_helpers import Gcf

    from .rich import display

    for manager in Gcf.get_all_fig_managers():
        display(manager.canvas.figure)
    Gcf.destroy_all()
