"""Tiny randomly initialised causal LMs and an offline tokenizer, for tests and smoke runs.

Nothing here touches the Hugging Face hub: the tokenizer is a GPT-2 style byte-level BPE
trained at call time on a word list that ships with this module, and the models are built
from ``transformers`` config classes with random weights. Five architectures are covered
(``ARCHITECTURES``) so that code paths which differ per architecture in ``transformers``
and in TransformerLens' ``TransformerBridge`` (learned vs rotary positions, tied
embeddings, grouped-query attention, Gemma's extra norms and sliding-window layers) can
be exercised in seconds on a CPU.

Typical use::

    tokenizer = build_offline_tokenizer()
    model = build_random_model(RandomModelSpec("llama", n_kv_heads=2), tokenizer)
    folder = save_random_model(model, tokenizer, tmp_path / "llama")
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu")

``TransformerBridge`` needs the tokenizer to come from a folder: when the tokenizer does
not add BOS itself, the bridge reloads it with ``AutoTokenizer.from_pretrained(
tokenizer.name_or_path, add_bos_token=True)``, which fails for a tokenizer built in memory.

For a saved qwen2 model, ``AutoTokenizer.from_pretrained(folder)`` always returns
``Qwen2Tokenizer`` (transformers forces it for model_type "qwen2"), which keeps the
vocabulary and merges but swaps in Qwen's pre-tokenizer: numbers split into single digits
and a space before a number becomes a token of its own, exactly as with real Qwen models.
Words are unaffected. The other four architectures reload the tokenizer unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ARCHITECTURES: tuple[str, ...] = ("llama", "gpt2", "gpt_neox", "gemma3", "qwen2")

# Architectures whose transformers attention has a separate key/value head count (and a
# free head_dim); gpt2 and gpt_neox tie both to num_attention_heads and hidden_size.
GQA_ARCHITECTURES: frozenset[str] = frozenset({"llama", "gemma3", "qwen2"})

SPECIAL_TOKEN = "<|endoftext|>"

# Cap handed to the BPE trainer. The corpus is built so that training runs out of pairs
# meeting MIN_PAIR_FREQUENCY well before the cap (about 1.8k tokens), which is what makes
# every word of SINGLE_TOKEN_WORDS a single token; build_offline_tokenizer checks that.
MAX_VOCAB_SIZE = 4096
MIN_PAIR_FREQUENCY = 2
# Lines per word in the corpus. Two already give the line-initial form (no leading space)
# MIN_PAIR_FREQUENCY occurrences; the third is headroom.
_LINES_PER_WORD = 3

# Context length of RandomModelSpec, and the tokenizer's model_max_length to match it.
DEFAULT_N_CTX = 256

# Gemma 3 alternates local (sliding-window) and global attention layers. Real checkpoints
# use 512-1024 token windows, which short prompts never reach; a window this small means
# ordinary test prompts do cross it, so the local-attention mask is actually exercised.
GEMMA3_SLIDING_WINDOW = 8
# Real Gemma 3 has five local layers per global one; with two-layer test models that
# would leave no global layer, so alternate instead (layer 0 local, layer 1 global, ...).
GEMMA3_LAYERS_PER_GLOBAL = 2

FIRST_NAMES: tuple[str, ...] = (
    # Names used by the IOI paper's templates plus other common English first names.
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Kate", "Alex",
    "Anna", "Andrew", "Ben", "Beth", "Bill", "Bob", "Brian", "Carl", "Carol", "Chris",
    "Claire", "Daniel", "David", "Diana", "Edward", "Elizabeth", "Emily", "Emma", "Eric",
    "Frank", "Gary", "George", "Grace", "Hannah", "Harry", "Helen", "Henry", "Jack",
    "Jacob", "Jake", "Jane", "Jason", "Jeff", "Jennifer", "Jessica", "Jim", "Joe",
    "Jonathan", "Joseph", "Josh", "Julia", "Justin", "Karen", "Kelly", "Kevin", "Laura",
    "Lauren", "Linda", "Lisa", "Lucy", "Luke", "Mark", "Matt", "Michael", "Michelle",
    "Mike", "Nancy", "Nathan", "Nick", "Nicole", "Oliver", "Patrick", "Paul", "Peter",
    "Rachel", "Richard", "Robert", "Rose", "Ryan", "Sam", "Samuel", "Sarah", "Scott",
    "Sean", "Simon", "Sophie", "Stephen", "Steve", "Susan", "Thomas", "Tim", "Tony",
    "Victoria", "William", "Adam", "Alice", "Allison", "Anthony", "Charles", "Charlie",
    "Christina", "Crystal", "Eve", "Gregory", "Ian", "Ivan", "Jeremy", "Jordan", "Kyle",
    "Leon", "Lindsay", "Louis", "Megan", "Max", "Paula", "Roman", "Russell", "Sullivan",
    "Taylor", "Timothy", "Tyler", "Zoe",
)  # fmt: skip

PLACES: tuple[str, ...] = (
    "store", "garden", "school", "park", "hospital", "restaurant", "office", "station",
    "house", "library", "beach", "river", "church", "market", "airport", "museum", "bank",
    "kitchen", "city", "town", "village", "farm", "forest", "lake", "mountain", "shop",
    "hotel", "cafe", "bar", "gym", "zoo", "theater", "cinema", "street", "party", "home",
)  # fmt: skip

OBJECTS: tuple[str, ...] = (
    "drink", "ring", "kiss", "bone", "basketball", "computer", "necklace", "ball", "book",
    "apple", "snack", "gift", "letter", "key", "phone", "bag", "hat", "cup", "pen",
    "pencil", "box", "car", "bike", "chair", "table", "door", "window", "dog", "cat",
    "bird", "fish", "flower", "tree", "coin", "watch", "shirt", "shoe", "card", "cake",
    "bread", "water", "coffee", "tea", "milk", "juice", "banana", "toy", "game", "ticket",
)  # fmt: skip

COLOURS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black",
    "white", "gray", "grey", "gold", "silver",
)  # fmt: skip

COUNTRY_CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Canada", "Ottawa"),
    ("Egypt", "Cairo"), ("India", "Delhi"), ("Greece", "Athens"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Portugal", "Lisbon"), ("Turkey", "Ankara"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Cuba", "Havana"),
    ("Thailand", "Bangkok"), ("Korea", "Seoul"), ("England", "London"),
    ("Australia", "Canberra"), ("Belgium", "Brussels"), ("Hungary", "Budapest"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
)  # fmt: skip

# Colored Objects (Merullo et al. 2023) answers are title-case colours; its object list
# has a few words the lists above lack.
COLOURED_OBJECTS_WORDS: tuple[str, ...] = (
    "Red", "Orange", "Yellow", "Green", "Blue", "Purple", "Brown", "Black",
    "lamp", "bowl", "plate", "spoon", "desk", "floor", "there", "you", "see", "I",
)  # fmt: skip

CAPITAL_LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

# "0" .. "99" and "00" .. "09": digits for arithmetic-style prompts and two-digit years
# (greater-than task, whose corrupted runs start in year "01").
NUMBERS: tuple[str, ...] = tuple(str(number) for number in range(100)) + tuple(
    f"{number:02d}" for number in range(10)
)

EVERYDAY_WORDS: tuple[str, ...] = (
    "When", "Then", "After", "While", "Afterwards", "The", "It", "This", "That", "What",
    "Who", "Where", "Why", "How", "Is", "Friends", "and", "or", "but", "so", "then",
    "went", "go", "goes", "to", "the", "a", "an", "of", "in", "at", "on", "for", "with",
    "from", "by", "is", "was", "are", "were", "be", "has", "had", "have", "did", "gave",
    "give", "gives", "giving", "handed", "brought", "got", "took", "decided", "said",
    "asked", "told", "wanted", "liked", "saw", "met", "made", "found", "left", "came",
    "friends", "friend", "he", "she", "they", "it", "his", "her", "their", "him", "them",
    "who", "what", "which", "not", "no", "yes", "Yes", "No", "True", "False", "Question",
    "Answer", "question", "answer", "sentiment", "positive", "negative", "neutral",
    "review", "movie", "film", "good", "bad", "great", "terrible", "love", "hate",
    "happy", "sad", "capital", "country", "colour", "color", "year", "years", "lasted",
    "war", "began", "ended", "correct", "wrong", "first", "last", "long", "day", "time",
    "very", "really", "fun", "place", "thing", "name",
)  # fmt: skip

SINGLE_TOKEN_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(  # dict keeps first-seen order and drops duplicates ("orange", "letter").
        FIRST_NAMES
        + PLACES
        + OBJECTS
        + COLOURS
        + COLOURED_OBJECTS_WORDS
        + tuple(word for pair in COUNTRY_CAPITALS for word in pair)
        + CAPITAL_LETTERS
        + NUMBERS
        + EVERYDAY_WORDS
    )
)
"""Words that encode to exactly one token, both as ``"Mary"`` and as ``" Mary"``."""

# A few prompt-shaped sentences so that the merges also cover the punctuation and layout
# the task prompts use. Every word in them is in SINGLE_TOKEN_WORDS.
_TEMPLATE_SENTENCES: tuple[str, ...] = (
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Then, Alice and Bob had a long day at the office. Bob gave a book to Alice.",
    "Question: What is the capital of France? Answer: Paris",
    "Question: Is the sentiment of this review positive or negative? Answer: positive",
    "The war lasted from the year 17 to the year 18.",
    "A: red, B: blue, C: green, D: yellow. Answer: B",
)


def _corpus_lines() -> list[str]:
    """Build the tokenizer training corpus, one training "document" per line.

    Each word gets ``_LINES_PER_WORD`` lines of the form ``"Mary Mary"``: the byte-level
    pre-tokenizer turns a line into ``["Mary", " Mary"]``, so both forms are counted. BPE
    keeps merging while some adjacent pair occurs at least ``MIN_PAIR_FREQUENCY`` times,
    so a word that occurs that often is merged all the way into one token, provided the
    vocabulary cap is not reached first.

    Returns:
        The corpus lines.
    """
    word_lines = [f"{word} {word}" for word in SINGLE_TOKEN_WORDS for _ in range(_LINES_PER_WORD)]
    return word_lines + list(_TEMPLATE_SENTENCES)


def build_offline_tokenizer(
    model_max_length: int = DEFAULT_N_CTX,
) -> transformers.PreTrainedTokenizerFast:
    """Train a small GPT-2 style byte-level BPE tokenizer, offline and deterministically.

    ``<|endoftext|>`` (id 0) is the only special token and serves as BOS, EOS, PAD and UNK,
    as in GPT-2. Like GPT-2's, the tokenizer does not add BOS by itself. Training takes a
    few tens of milliseconds, and two calls give identical vocabularies and merges.

    Args:
        model_max_length: Recorded as the tokenizer's ``model_max_length``; pass the
            model's context length.

    Returns:
        The tokenizer, right-padded. Every word in ``SINGLE_TOKEN_WORDS`` encodes to a single
        token both with and without a leading space.

    Raises:
        RuntimeError: If a word of ``SINGLE_TOKEN_WORDS`` did not end up a single token,
            which means ``MAX_VOCAB_SIZE`` is too small for the word list.
    """
    bpe_tokenizer = Tokenizer(models.BPE())
    bpe_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe_tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False as in GPT-2's tokenizer.json: a token's offsets include its space.
    bpe_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=MAX_VOCAB_SIZE,
        min_frequency=MIN_PAIR_FREQUENCY,
        special_tokens=[SPECIAL_TOKEN],
        # All 256 byte symbols, so any text round-trips and nothing is ever unknown.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe_tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)

    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        padding_side="right",
        model_max_length=model_max_length,
        add_prefix_space=False,
        add_bos_token=False,
    )
    split_words = [
        word
        for word in SINGLE_TOKEN_WORDS
        if len(tokenizer.encode(" " + word)) != 1 or len(tokenizer.encode(word)) != 1
    ]
    if split_words:
        raise RuntimeError(
            f"{len(split_words)} words are not single tokens (e.g. {split_words[:5]}); "
            f"the BPE vocabulary cap MAX_VOCAB_SIZE={MAX_VOCAB_SIZE} is too small."
        )
    return tokenizer


@dataclass(frozen=True)
class RandomModelSpec:
    """Dimensions of a tiny random causal LM.

    Attributes:
        architecture: One of ``ARCHITECTURES``.
        n_layers: Number of transformer blocks.
        d_model: Residual stream width.
        n_heads: Number of query heads.
        n_kv_heads: Number of key/value heads; ``None`` means ``n_heads``. Fewer than
            ``n_heads`` gives grouped-query attention, which only ``GQA_ARCHITECTURES``
            support.
        d_head: Width of one head; ``None`` means ``d_model // n_heads``. Only
            ``GQA_ARCHITECTURES`` accept a width with ``d_head * n_heads != d_model``.
        d_mlp: Hidden width of the MLP.
        n_ctx: Maximum context length (positions).
        seed: Torch seed for the weight initialisation.

    Raises:
        ValueError: On construction, if the dimensions do not fit the architecture.
    """

    architecture: str
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_mlp: int = 128
    n_ctx: int = DEFAULT_N_CTX
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject dimensions the architecture cannot express, before any model is built."""
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"Unknown architecture {self.architecture!r}; expected one of {ARCHITECTURES}."
            )
        sizes = {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_kv_heads": self.resolved_n_kv_heads,
            "d_mlp": self.d_mlp,
            "n_ctx": self.n_ctx,
        }
        if self.d_head is not None:
            sizes["d_head"] = self.d_head
        not_positive = [name for name, size in sizes.items() if size <= 0]
        if not_positive:
            raise ValueError(f"{', '.join(not_positive)} must be positive.")
        supports_gqa = self.architecture in GQA_ARCHITECTURES
        if self.resolved_n_kv_heads != self.n_heads and not supports_gqa:
            raise ValueError(
                f"Architecture {self.architecture!r} has no grouped-query attention, so "
                f"n_kv_heads ({self.n_kv_heads}) must equal n_heads ({self.n_heads}) or be "
                f"None; use one of {sorted(GQA_ARCHITECTURES)} for GQA."
            )
        if self.n_heads % self.resolved_n_kv_heads != 0:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                f"({self.resolved_n_kv_heads})."
            )
        if self.d_head is None and self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}); "
                "set d_head explicitly."
            )
        if self.resolved_d_head * self.n_heads != self.d_model and not supports_gqa:
            raise ValueError(
                f"Architecture {self.architecture!r} needs d_head * n_heads == d_model "
                f"({self.resolved_d_head} * {self.n_heads} != {self.d_model})."
            )

    @property
    def resolved_n_kv_heads(self) -> int:
        """Number of key/value heads, with the ``None`` default applied."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def resolved_d_head(self) -> int:
        """Head width, with the ``None`` default applied."""
        return self.d_model // self.n_heads if self.d_head is None else self.d_head


def build_config(
    spec: RandomModelSpec, tokenizer: transformers.PreTrainedTokenizerBase
) -> transformers.PretrainedConfig:
    """Translate a spec into its architecture's ``transformers`` config.

    Args:
        spec: Architecture and dimensions.
        tokenizer: Supplies the vocabulary size and the BOS/EOS/PAD ids.

    Returns:
        The config; ``AutoModelForCausalLM.from_config`` builds the matching model.
    """
    token_fields = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if spec.architecture == "gpt2":
        return transformers.GPT2Config(
            n_layer=spec.n_layers,
            n_embd=spec.d_model,
            n_head=spec.n_heads,
            n_inner=spec.d_mlp,
            n_positions=spec.n_ctx,
            # Eval mode skips dropout anyway; zero it so train() is deterministic too.
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **token_fields,
        )
    if spec.architecture == "gpt_neox":
        # Defaults give Pythia's layout: rotary on a quarter of each head
        # (partial_rotary_factor 0.25) and parallel attention + MLP residual.
        return transformers.GPTNeoXConfig(
            num_hidden_layers=spec.n_layers,
            hidden_size=spec.d_model,
            num_attention_heads=spec.n_heads,
            intermediate_size=spec.d_mlp,
            max_position_embeddings=spec.n_ctx,
            tie_word_embeddings=False,
            attention_dropout=0.0,
            hidden_dropout=0.0,
            **token_fields,
        )
    llama_like_fields = {
        "num_hidden_layers": spec.n_layers,
        "hidden_size": spec.d_model,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.resolved_n_kv_heads,
        "head_dim": spec.resolved_d_head,
        "intermediate_size": spec.d_mlp,
        "max_position_embeddings": spec.n_ctx,
        **token_fields,
    }
    if spec.architecture == "llama":
        return transformers.LlamaConfig(tie_word_embeddings=False, **llama_like_fields)
    if spec.architecture == "qwen2":
        # Qwen2's sliding window is opt-in and off in released checkpoints; keep it off.
        return transformers.Qwen2Config(
            tie_word_embeddings=False, use_sliding_window=False, **llama_like_fields
        )
    if spec.architecture == "gemma3":
        layer_types = [
            "full_attention" if (layer + 1) % GEMMA3_LAYERS_PER_GLOBAL == 0 else "sliding_attention"
            for layer in range(spec.n_layers)
        ]
        return transformers.Gemma3TextConfig(
            layer_types=layer_types,
            sliding_window=min(GEMMA3_SLIDING_WINDOW, spec.n_ctx),
            # Gemma 3 scales attention scores by this instead of d_head; its default (256)
            # is the real models' d_head, not ours.
            query_pre_attn_scalar=spec.resolved_d_head,
            **llama_like_fields,
        )
    raise AssertionError(f"unhandled architecture {spec.architecture!r}")  # pragma: no cover


def build_random_model(
    spec: RandomModelSpec, tokenizer: transformers.PreTrainedTokenizerBase
) -> transformers.PreTrainedModel:
    """Build a randomly initialised causal LM.

    Weights use the architecture's default Hugging Face initialisation (normal with
    ``initializer_range`` 0.02), drawn right after ``torch.manual_seed(spec.seed)``, so the
    same spec always gives the same weights. The caller's global RNG state is left as is.

    Args:
        spec: Architecture and dimensions.
        tokenizer: Supplies the vocabulary size and the BOS/EOS/PAD ids.

    Returns:
        The model in eval mode, fp32, on the CPU, with eager attention (which attention
        pattern hooks need, and which TransformerBridge switches to anyway).
    """
    config = build_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation="eager", dtype=torch.float32
        )
    # A loaded checkpoint's config names its class (save_pretrained writes it); a fresh one
    # does not. TransformerBridge picks its adapter from this list, and for model_type
    # "gemma3_text" it has no fallback, so set it as a checkpoint would.
    model.config.architectures = [type(model).__name__]
    return model.eval()


def save_random_model(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    folder: str | Path,
) -> Path:
    """Save a model with its tokenizer so that ``from_pretrained(folder)`` reloads both.

    The folder then works wherever a hub model name does, offline: in
    ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` and in
    ``TransformerBridge.boot_transformers(str(folder))``.

    Args:
        model: Model to save.
        tokenizer: Tokenizer to save next to it.
        folder: Destination folder; created if missing.

    Returns:
        The folder as a ``Path``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
