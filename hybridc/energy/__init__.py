"""Where Equilibrium Propagation lives: the analog block contract (`block`), its kinds (`dhn`: the Hopfield
energy, `drn`: deep resistive networks), the fixed-point relaxation (`solver`), the gradient estimators (EP, ID,
BPTT: `estimators`, with ID's adjoint solve in `implicit`), ∂Φ/∂s by explicit transposed ops (`transpose/`),
equilibrium by construction (`contraction`), the settings (`settings`), neuron activations and the GOE init.
Nothing here imports the runtime, training, export or the CLI."""
