"""The special tokens objectives use (UL2 mode tokens, span-corruption sentinels), TF-free.

Which pieces of a SentencePiece model they are (see `tasks.vocab` for the two vocabulary styles):
- our own vocabularies ("extra_id" style): the user-defined pieces `[NLU]`, `[NLG]`, `[S2S]`,
  `<extra_id_0>`, ..., `<extra_id_{K-1}>`;
- Gemma-style ("reserved" style): `[NLU]` -> `<unused0>`, `[NLG]` -> `<unused1>`, `[S2S]` ->
  `<unused2>`, sentinel i -> `<unused{i+3}>`.
`tasks.vocab.special_tokens(vocab)` builds the table of a vocabulary; this module needs only
SentencePiece (no seqio, no TensorFlow), so the objectives' planning and NumPy code can use it.
"""
import dataclasses
import functools
from typing import Dict, Mapping, Optional, Sequence, Tuple

MODE_TOKENS = ('[NLU]', '[NLG]', '[S2S]')
STYLE_OWN = 'extra_id'
STYLE_RESERVED = 'reserved'
RESERVED_MODE_OFFSET = 0  # `[NLU]`, `[NLG]`, `[S2S]` -> `<unused0..2>`.
RESERVED_SENTINEL_OFFSET = len(MODE_TOKENS)  # Sentinel i -> `<unused{i + 3}>`.


def sentinel_piece(i: int) -> str:
  return f'<extra_id_{i}>'


def reserved_piece(i: int) -> str:
  return f'<unused{i}>'

@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Ids (and text forms) of the UL2 mode tokens and the span-corruption sentinels.

  Attributes:
    mode_ids: `{'[NLU]': id, '[NLG]': id, '[S2S]': id}`.
    sentinel_ids: sentinel ids, sentinel 0 first.
    mode_pieces: `{'[NLU]': text form, ...}`; equal to the key in our own vocabularies, the
      reserved piece (e.g. `<unused0>`) in Gemma-style ones.
    sentinel_pieces: text forms of the sentinels, sentinel 0 first.
    style: `'extra_id'` (our own vocabulary) or `'reserved'` (Gemma-style).
  """
  mode_ids: Mapping[str, int]
  sentinel_ids: Tuple[int, ...]
  mode_pieces: Mapping[str, str]
  sentinel_pieces: Tuple[str, ...]
  style: str

  def __post_init__(self):
    if set(self.mode_ids) != set(MODE_TOKENS):
      raise ValueError(f'SpecialTokens.mode_ids must have keys {MODE_TOKENS}, got '
                       f'{sorted(self.mode_ids)}')
    if not self.sentinel_ids:
      raise ValueError('SpecialTokens.sentinel_ids must be non-empty')
    if len(self.sentinel_pieces) != len(self.sentinel_ids):
      raise ValueError(f'SpecialTokens.sentinel_pieces has {len(self.sentinel_pieces)} entries '
                       f'for {len(self.sentinel_ids)} sentinel_ids')
    ids = list(self.mode_ids.values()) + list(self.sentinel_ids)
    if len(set(ids)) != len(ids):
      raise ValueError(f'SpecialTokens ids must be distinct, got {ids}')
    object.__setattr__(self, 'mode_ids', dict(self.mode_ids))
    object.__setattr__(self, 'mode_pieces', dict(self.mode_pieces))
    object.__setattr__(self, 'sentinel_ids', tuple(int(i) for i in self.sentinel_ids))
    object.__setattr__(self, 'sentinel_pieces', tuple(self.sentinel_pieces))

  def __hash__(self):
    return hash((tuple(sorted(self.mode_ids.items())), self.sentinel_ids, self.style))

  @property
  def num_sentinels(self) -> int:
    return len(self.sentinel_ids)

  @property
  def piece_of_id(self) -> Dict[int, str]:
    """id -> text form, for all special tokens (used by inspection)."""
    out = {self.mode_ids[m]: self.mode_pieces[m] for m in MODE_TOKENS}
    out.update(zip(self.sentinel_ids, self.sentinel_pieces))
    return out


def _piece_id(sp, piece: str) -> Optional[int]:
  i = sp.piece_to_id(piece)
  if i == sp.unk_id() and piece != sp.id_to_piece(i):
    return None
  return i


def _piece_type(sp, pid: int) -> str:
  for name in ('control', 'unknown', 'unused', 'byte'):
    if getattr(sp, f'is_{name}')(pid):
      return f'type {name.upper()}'
  return 'type NORMAL or USER_DEFINED'


def _consecutive(sp, make_piece, first: int) -> Sequence[Tuple[str, int]]:
  out = []
  i = first
  while True:
    piece = make_piece(i)
    pid = _piece_id(sp, piece)
    if pid is None:
      return out
    out.append((piece, pid))
    i += 1


@functools.lru_cache(maxsize=32)
def special_tokens_for_model(model_bytes: bytes, description: str) -> SpecialTokens:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_proto=model_bytes)
  if all(_piece_id(sp, m) is not None for m in MODE_TOKENS) and _piece_id(
      sp, sentinel_piece(0)) is not None:
    style = STYLE_OWN
    mode_pieces = {m: m for m in MODE_TOKENS}
    sentinels = _consecutive(sp, sentinel_piece, 0)
  elif _piece_id(sp, reserved_piece(0)) is not None:
    style = STYLE_RESERVED
    reserved = _consecutive(sp, reserved_piece, 0)
    if len(reserved) <= RESERVED_SENTINEL_OFFSET:
      raise ValueError(f'Vocabulary {description} has only {len(reserved)} reserved pieces '
                       f'<unused0>..; need {RESERVED_SENTINEL_OFFSET} for mode tokens plus at '
                       'least one sentinel.')
    mode_pieces = {m: reserved[RESERVED_MODE_OFFSET + k][0] for k, m in enumerate(MODE_TOKENS)}
    sentinels = reserved[RESERVED_SENTINEL_OFFSET:]
  else:
    raise ValueError(
        f'Vocabulary {description} has neither our special pieces ({", ".join(MODE_TOKENS)}, '
        '<extra_id_0>, ...) nor Gemma-style reserved pieces (<unused0>, <unused1>, ...). Train one '
        'with `python -m pipelines.train_vocab` or use a Gemma tokenizer.')
  mode_ids = {m: sp.piece_to_id(mode_pieces[m]) for m in MODE_TOKENS}
  # Every special token must be a single piece both ways.
  for piece, pid in list(zip(mode_pieces.values(), mode_ids.values())) + list(sentinels):
    encoded = sp.encode(piece)
    decoded = sp.decode([pid])
    if encoded != [pid] or decoded != piece:
      raise ValueError(
          f'Vocabulary {description}: special piece {piece!r} (id {pid}, {_piece_type(sp, pid)}) '
          f'does not round-trip: encode -> {encoded}, decode -> {decoded!r}. Special pieces must '
          'be USER_DEFINED pieces and the model must not add a dummy prefix.')
  return SpecialTokens(mode_ids=mode_ids, sentinel_ids=tuple(i for _, i in sentinels),
                       mode_pieces=mode_pieces, sentinel_pieces=tuple(p for p, _ in sentinels),
                       style=style)


def pair_separator(tokens: SpecialTokens) -> Tuple[str, int]:
  """(piece, id) an encoder puts between the two texts of a sentence pair.

  Neither vocabulary style has a piece of its own for this, so the separator is the last reserved
  piece: `<extra_id_{K-1}>` in our vocabularies, the last `<unusedN>` in Gemma-style ones. Span
  corruption uses sentinels from 0 up and reaches the last one only when a chunk needs all K, and
  a downstream task uses no sentinel, so inside a fine-tuning input the piece means "next part".
  """
  return tokens.sentinel_pieces[-1], tokens.sentinel_ids[-1]
