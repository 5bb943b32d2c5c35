"""``tunelab study``: one fine-tune scored per method on utility × safety drift × privacy leakage × cost.

A study trains every arm (a method, an optimizer, ε, ... over one shared ``tunelab train`` config)
on one data split with one canary set, for paired seeds, and measures each arm × seed with the
library's own evaluations; ``study.json`` (:mod:`tunelab.study.results`) holds every figure.
"""
