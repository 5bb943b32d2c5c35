"""Looking inside a model: named hook points, attention-head scores, pruning, steering.

``hooks`` finds the decoder blocks of any Llama-family Hugging Face model (plain, PEFT-wrapped or
merged) and records or patches named points; ``heads`` scores attention heads and zeroes the
inactive ones per input; ``pruning`` runs Probe Pruning, Wanda-sp and alignment-aware pruning;
``steering`` trains, saves and applies steering vectors; ``refusal`` finds, ablates and
orthogonalizes the refusal direction; ``salt`` steers away from leaking private context;
``multiturn`` audits answer stability under "Think again." as a Markov chain.
"""
