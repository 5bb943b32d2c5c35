"""Word-level string manipulation: reverse the order of a short list of words."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunelab.tasks.base import Task

# Common, concrete, lower-case English nouns; embedded so the task needs no external data.
WORDS: tuple[str, ...] = (
    "apple", "arm", "baby", "bag", "ball", "bank", "bed", "bell", "bird", "boat",
    "bone", "book", "bottle", "box", "bread", "bridge", "brush", "cake", "camera", "candle",
    "car", "card", "cat", "chair", "cheese", "church", "clock", "cloud", "coat", "coin",
    "corn", "cow", "cup", "desk", "dog", "door", "dress", "drum", "duck", "eagle",
    "egg", "engine", "eye", "farm", "feather", "fence", "field", "finger", "fire", "fish",
    "flag", "flower", "fork", "fox", "frog", "garden", "gate", "glass", "glove", "goat",
    "grape", "hammer", "hand", "hat", "heart", "hill", "horse", "house", "island", "jacket",
    "jar", "key", "kitchen", "kite", "knife", "ladder", "lake", "lamp", "leaf", "lemon",
    "letter", "lion", "lock", "map", "market", "milk", "mirror", "money", "moon", "mountain",
    "mouse", "nail", "needle", "nest", "night", "nose", "ocean", "onion", "orange", "owl",
    "paper", "pear", "pen", "pencil", "piano", "pig", "pillow", "pipe", "plane", "plate",
    "pocket", "potato", "queen", "rabbit", "rain", "ring", "river", "road", "rock", "roof",
    "rope", "salt", "sand", "school", "sheep", "ship", "shirt", "shoe", "snake", "snow",
    "sock", "spoon", "star", "stone", "street", "sugar", "sun", "table", "tiger", "tooth",
    "towel", "tower", "train", "tree", "truck", "wall", "watch", "water", "whale", "window",
)


@dataclass(frozen=True)
class ReverseWordsTask(Task):
    """Reverse the order of 3-5 distinct words; the response is the words, space-separated."""

    name: str = "reverse_words"
    description: str = (
        "Reverse the order of a list of 3-5 words; the response is the reversed list, "
        "words separated by single spaces."
    )
    scorer: str = "exact"

    def draw(self, rng: random.Random) -> tuple[str, str]:
        words = rng.sample(WORDS, rng.randint(3, 5))
        prompt = (
            f"Reverse the order of these words: {' '.join(words)}\n"
            "Answer with the reversed words only."
        )
        return prompt, " ".join(reversed(words))
