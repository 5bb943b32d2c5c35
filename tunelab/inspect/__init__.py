"""Looking inside a model: named hook points, attention-head scores, pruning.

``hooks`` finds the decoder blocks of any Llama-family Hugging Face model (plain, PEFT-wrapped or
merged) and records or patches named points; ``heads`` scores attention heads and zeroes the
inactive ones per input; ``pruning`` runs Probe Pruning, Wanda-sp and alignment-aware pruning.
"""
