"""Regenerate docs/gallery.md and its diagrams: python docs/make_gallery.py

Each model of the gallery (hand-written classics, then every architecture of gc.models, then
the grid and tree networks) is drawn as a circuit and unfolded over a few steps or cells, or
over one tree with its gradient (SVG, in docs/gallery/), and its equations and derived backward
equations are written out in LaTeX."""
from pathlib import Path

import numpy as np
import sympy as sp

import graphcomp as gc
from graphcomp.views.latex import aligned

t = gc.t
HERE = Path(__file__).resolve().parent
OUT = HERE / "gallery"


def scalar_map():
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, b, c = sp.symbols("a b c")
    return gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 1)) + c * x(t)}, loss=(s(t) - y(t)) ** 2)


def elman(D=3, H=4, O=2):
    h, x, y = gc.signal("h", H), gc.signal("x", D), gc.signal("y", O)
    W, U, V, b = gc.param("W", H, H), gc.param("U", H, D), gc.param("V", O, H), gc.param("b", H)
    return gc.Recurrence({h(t): gc.tanh(W * h(t - 1) + U * x(t) + b)}, outputs={"o": V * h(t)},
                         loss=gc.mse(gc.signal("o", O)(t), y(t)))


def lstm(D=3, H=4, O=2):
    h, c, x, y = gc.signal("h", H), gc.signal("c", H), gc.signal("x", D), gc.signal("y", O)
    gate = {g: gc.param(f"W_{g}", H, H) * h(t - 1) + gc.param(f"U_{g}", H, D) * x(t) + gc.param(f"b_{g}", H)
            for g in "ifog"}
    i, f, o, g = gc.sigmoid(gate["i"]), gc.sigmoid(gate["f"]), gc.sigmoid(gate["o"]), gc.tanh(gate["g"])
    V = gc.param("V", O, H)
    return gc.Recurrence({c(t): gc.hadamard(f, c(t - 1)) + gc.hadamard(i, g),
                          h(t): gc.hadamard(o, gc.tanh(c(t)))},
                         outputs={"z": V * h(t)}, loss=gc.cross_entropy(gc.signal("z", O)(t), y(t)))


def gru(D=3, H=4, O=2):
    """PyTorch's formulation: the reset gate scales the recurrent product."""
    h, x, y = gc.signal("h", H), gc.signal("x", D), gc.signal("y", O)
    W = {g: gc.param(f"W_{g}", H, D) for g in "rzn"}
    U = {g: gc.param(f"U_{g}", H, H) for g in "rzn"}
    b = {g: gc.param(f"b_{g}", H) for g in "rzn"}
    r = gc.sigmoid(W["r"] * x(t) + U["r"] * h(t - 1) + b["r"])
    z = gc.sigmoid(W["z"] * x(t) + U["z"] * h(t - 1) + b["z"])
    n = gc.tanh(W["n"] * x(t) + gc.hadamard(r, U["n"] * h(t - 1)) + b["n"])
    V = gc.param("V", O, H)
    return gc.Recurrence({h(t): n + gc.hadamard(z, h(t - 1) - n)}, outputs={"o": V * h(t)},
                         loss=gc.mse(gc.signal("o", O)(t), y(t)))


def delays():
    s, x, y = sp.Function("s"), sp.Function("x"), sp.Function("y")
    a, b, c = sp.symbols("a b c")
    return gc.Recurrence({s(t): a * s(t - 1) + b * sp.tanh(s(t - 3)) + c * x(t)}, loss=(s(t) - y(t)) ** 2)


def bidirectional(D=3, H=4, O=2):
    f, g, x, y = gc.signal("f", H), gc.signal("g", H), gc.signal("x", D), gc.signal("y", O)
    W_f, W_g = gc.param("W_f", H, H), gc.param("W_g", H, H)
    U_f, U_g = gc.param("U_f", H, D), gc.param("U_g", H, D)
    V_f, V_g = gc.param("V_f", O, H), gc.param("V_g", O, H)
    return gc.Recurrence({f(t): gc.tanh(W_f * f(t - 1) + U_f * x(t)), g(t): gc.tanh(W_g * g(t + 1) + U_g * x(t))},
                         outputs={"o": V_f * f(t) + V_g * g(t)}, loss=gc.mse(gc.signal("o", O)(t), y(t)))


M = gc.models
LIBRARY = [   # every architecture of gc.models, small enough to read
    ("models_elman", "gc.models.elman, 2 layers", lambda: M.elman(2, 3, 2, layers=2),
     "Elman's network stacked: layer 2 reads layer 1's state at the same step (no delay square between them)."),
    ("models_jordan", "gc.models.jordan", lambda: M.jordan(2, 3, 2),
     "Jordan's network: the hidden layer reads the previous output o(t-1), which is a state."),
    ("models_jordan_tf", "gc.models.jordan, teacher_forcing=True", lambda: M.jordan(2, 3, 2, teacher_forcing=True),
     "Teacher forcing: the hidden layer reads the previous target y(t-1) instead; o is a plain output, "
     "so training has no recurrence through time left."),
    ("models_lstm_peephole", "gc.models.lstm, peephole=True", lambda: M.lstm(2, 3, 2, peephole=True),
     "An LSTM whose gates also read the cell (p_i, p_f on c(t-1), p_o on c(t))."),
    ("models_gru_original", "gc.models.gru, variant=\"original\"", lambda: M.gru(2, 3, 2, variant="original"),
     "Cho et al.'s GRU: the reset gate scales h(t-1) before the product with W_n."),
    ("models_leaky", "gc.models.leaky, alpha=\"learned\"", lambda: M.leaky(2, 3, 2, alpha="learned"),
     "Leaky-integrator units with learned per-unit rates α = σ(alpha_logit), kept in (0, 1) by the sigmoid."),
    ("models_bidirectional", "gc.models.gru, bidirectional=True", lambda: M.gru(2, 3, 2, bidirectional=True),
     "A forward and a backward GRU (h_bw reads h_bw(t+1), red square); the readout reads [h; h_bw]."),
    ("models_seq2seq", "gc.models.seq2seq (encoder–decoder)", lambda: M.seq2seq(2, 3, 2, cell="elman"),
     "One state on one time axis: src(t) = 1 on source steps selects the encoder's weights, 0 the decoder's, "
     "which reads the previous target y(t-1); the loss counts target steps only."),
    ("models_esn", "gc.models.esn (echo-state network)", lambda: M.esn(1, 3, 1, leak=0.5),
     "A leaky reservoir W, U, b drawn at a given spectral radius and kept fixed; only V and b_V are trained."),
]

GRIDS = [   # the grid networks of gc.models, unfolded over a few cells
    ("grid_mdrnn", "gc.models.mdrnn (a 2-D RNN)", lambda: M.mdrnn(1, 2, 2), (3, 3),
     "Each cell reads its neighbours above, h(i-1, j) through Wi, and to the left, h(i, j-1) through Wj: "
     "a square marks each delay with its axis. Unfolded, the cells sit where the grid has them, each with its "
     "input beside its state and its readout and loss above; the dashed nodes around the grid are the values "
     "read outside it (zeros, or `initial`)."),
    ("grid_mdrnn4", "gc.models.mdrnn, directions=4", lambda: M.mdrnn(1, 2, 2, directions=4), (2, 2),
     "Four sweeps, one from each corner (h_tl, h_tr, h_bl, h_br): a sweep that reads ahead along an axis "
     "(i+1 or j+1) is drawn red and dashed, as a backward state is in time, and reads the far side's boundary. "
     "The readout reads all four states."),
    ("grid_mdlstm", "gc.models.mdlstm (Graves' MD-LSTM)", lambda: M.mdlstm(1, 2, 2), (2, 2),
     "One forget gate per axis: c(i, j) forgets c(i-1, j) through f_i and c(i, j-1) through f_j; h(i, j) reads "
     "c(i, j) in the same cell."),
    ("grid_gru2d", "gc.models.gru2d", lambda: M.gru2d(1, 2, 2), (2, 2),
     "A GRU whose previous state is a gated mix of the two neighbours, so that h stays a convex combination of "
     "the candidate and its neighbours."),
]

TREE = np.array([[0, 0], [0, 0], [1, 2], [0, 0], [3, 4]])   # root 5 reads nodes 3 and 4, node 3 the leaves 1, 2
TREES = [   # the tree networks of gc.models, unfolded over TREE
    ("tree_rnn", "gc.models.tree_rnn (a binary Tree-RNN)", lambda: M.tree_rnn(2, 3, 2),
     "A node's state reads its first child's through W0 and its second's through W1. Unfolded, node 5 reads "
     "nodes 3 and 4 and node 3 the leaves 1 and 2; in the gradient a node's cotangent gathers from its parent "
     "(red, dashed) as well as from its own loss."),
    ("tree_lstm_nary", "gc.models.tree_lstm, kind=\"nary\"", lambda: M.tree_lstm(2, 3, 2, kind="nary"),
     "The N-ary Tree-LSTM (K = 2, as in examples/arithmetic_trees.py): each child slot has its own weights in "
     "every gate (W0_i, W1_i, ...) and its own forget gate f0, f1 on its child's cell."),
    ("tree_lstm_childsum", "gc.models.tree_lstm, kind=\"childsum\"", lambda: M.tree_lstm(2, 3, 2, kind="childsum"),
     "The child-sum Tree-LSTM: the gates read the sum of the children's states through W_*, and each present "
     "child gets its own forget gate from its own state."),
]

GALLERY = [
    ("scalar_map", "A damped nonlinear map", scalar_map,
     "The scalar map of a dynamical system driven by an input: one state, one delayed self-edge."),
    ("elman", "Elman network", elman,
     "Hidden-to-hidden recurrence with a linear readout and a squared-error loss. Its adjoint is "
     "the textbook's: the gradient at h(t) comes from the loss at t and, through Wᵀ and tanh', from h(t+1)."),
    ("lstm", "LSTM", lstm,
     "The cell c(t) carries memory through the forget gate; h(t) reads c(t) at the same step."),
    ("gru", "GRU (PyTorch's formulation)", gru,
     "The reset gate r scales the recurrent product U_n h(t-1) before the tanh."),
    ("delays", "Delays 1 and 3", delays,
     "A state that reads itself one and three steps back: two delay squares, marked 1 and 3."),
    ("bidirectional", "Bidirectional network", bidirectional,
     "f runs forward in time, g reads g(t+1) and runs backwards (red); the output combines both."),
] + LIBRARY + GRIDS + TREES


def main() -> None:
    OUT.mkdir(exist_ok=True)
    lines = ["# Gallery", "",
             "Circuit and unfolded diagrams, equations and derived BPTT equations of classic recurrences, "
             "as graphcomp draws and derives them. Regenerate with `python docs/make_gallery.py` "
             "(needs graphviz's `dot`).", "",
             "In a circuit, a black square marked k is a delay of k steps; a red square marked +k reads k "
             "steps ahead (the state runs backwards in time). Unfolded, each column is one time step and "
             "every step carries the same parameter labels: the parameters are shared.", ""]
    drawn = 0
    for key, title, make, *steps, text in GALLERY:
        if key == LIBRARY[0][0]:
            lines += ["---", "", "The rest of the gallery is the model library, `gc.models` (guide, section 7), "
                      "at small sizes: what each function returns, drawn and derived like any recurrence.", ""]
        if key == GRIDS[0][0]:
            lines += ["---", "", "Grid networks run over the rows i and columns j of an image (guide, section 9): "
                      "in a circuit, a square names the axis of each delay (i−1: the cell above).", ""]
        if key == TREES[0][0]:
            lines += ["---", "", "Tree networks run up a tree, a node's state from its children's (guide, section 10): "
                      "in a circuit, a diamond marks each read at a child with its slot; unfolded, one tree is drawn "
                      "as a tree, root at the top.", ""]
        model = make()
        if key.startswith("tree"):
            views = {"circuit": {}, "unfolded": {"children": TREE}, "gradient": {"children": TREE}}
            header, backward = "| circuit | one tree of 5 nodes, unfolded | its gradient |", "through structure"
        else:
            steps = steps[0] if steps else 4
            views = {"circuit": {}, "unfolded": {"steps": steps}}
            over = f"{steps[0]} x {steps[1]} cells" if isinstance(steps, tuple) else f"{steps} steps"
            header, backward = f"| circuit | unfolded over {over} |", "BPTT"
        for kind, options in views.items():
            (OUT / f"{key}_{kind}.svg").write_bytes(model.draw(kind, **options).pipe(format="svg"))
        drawn += len(views)
        lines += [f"## {title}", "", text, "", header, "|---" * len(views) + "|",
                  "| " + " | ".join(f"![{title} {kind}](gallery/{key}_{kind}.svg)" for kind in views) + " |",
                  "", "Equations:", "", "$$", model.latex(gradient=False), "$$", "",
                  f"Derived backward ({backward}) equations:", "", "$$", aligned(model.gradient_equations()), "$$", ""]
    (HERE / "gallery.md").write_text("\n".join(lines))
    print(f"wrote {HERE / 'gallery.md'} and {drawn} diagrams in {OUT}")


if __name__ == "__main__":
    main()
