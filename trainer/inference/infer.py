"""The `trainer.infer` library: a checkpoint + JSONL (or a task's inputs) -> JSONL generations.

  infer(checkpoint_path='/ckpt/run', input_file='in.jsonl', output_file='out.jsonl',
        decode_method='greedy', max_decode_length=64)

Input lines: {"text": "..."} (needs a vocabulary) or {"input_ids": [17, 9, 4]} (used as given: no
EOS or BOS added); other keys are ignored. Output lines, one per input, in input order:
  {"output_ids": [5, 8, 1], "text": "...", "score": -3.2}
`output_ids` are the generated ids (EOS included when produced), `text` their detokenisation (when a
vocabulary is known), `score` their summed log-probability (beam search: of the chosen beam).

Prompt layout, by checkpoint kind (`load_model`):
* trainer checkpoint (orbax dir + `model_config.json`): what seqio's feature converters trained it
  on. Decoder-only: `[0, x_1 .. x_n]` (start id 0 first), read as a bidirectional PrefixLM prefix
  when `prefix_lm` (the default, as gin/runs/eval.gin), else causally. Encoder-decoder: x encoded,
  decoding from start id 0. `text` is encoded with EOS appended (seqio's `add_eos` on inputs).
* Hugging Face directory (config.json): transformers' semantics. Gemma 2 continues the prompt
  exactly as given (no start id 0: it changes HF Gemma 2's greedy output); T5Gemma decodes from
  config.json's `decoder_start_token_id`, else its `bos_token_id` (what `generate` does). `text`
  is encoded with BOS (id 2) first, as the Gemma tokenizer does.

Bad input is rejected before anything is written (a ValueError naming the line): unreadable JSON,
neither or both of text / input_ids, an empty prompt, ids outside the vocabulary, a prompt longer
than `max_input_length` (unless `truncate='left'`, which keeps its last tokens). An interrupted run
rerun with the same output continues after the last complete line.
"""
import json
import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from trainer.checkpoint import loader
from trainer.inference import decoding
from trainer.inference import placement
from trainer.inference import sampling
from trainer.model.config import EncoderDecoderConfig

BOS_ID = 2
EOS_ID = 1
TRUNCATE = ('error', 'left')


class InferInputError(ValueError):
  """Bad input to `trainer.infer` (the message names the file, line and field)."""


def load_model(checkpoint_path: str) -> Dict[str, Any]:
  """{'config', 'params', 'kind': 'trainer' | 'hf', 'decoder_start_id'} of any checkpoint path."""
  model_type = loader.hf_model_type(checkpoint_path) if os.path.isdir(checkpoint_path) else None
  config, params = loader.load_checkpoint(checkpoint_path, flag='CHECKPOINT_PATH')
  if config is None:
    raise loader.CheckpointError(
        f'CHECKPOINT_PATH={checkpoint_path}: an orbax checkpoint without model_config.json in it '
        'or its parents, and not a Hugging Face directory (no config.json)')
  start = 0
  if model_type is not None:
    hf = json.load(open(os.path.join(checkpoint_path, 'config.json'), encoding='utf-8'))
    if isinstance(config, EncoderDecoderConfig):
      start = hf.get('decoder_start_token_id')
      start = hf.get('bos_token_id', BOS_ID) if start is None else start
  return {'config': config, 'params': params, 'kind': 'trainer' if model_type is None else 'hf',
          'decoder_start_id': int(start)}


def _vocab_size(config) -> int:
  return (config.decoder if isinstance(config, EncoderDecoderConfig) else config).vocab_size


def read_jsonl(path: str) -> List[Dict[str, Any]]:
  """Every line of a JSONL file as an object (InferInputError naming the line otherwise)."""
  if not os.path.isfile(path):
    raise InferInputError(f'INPUT_FILE={path}: no such file')
  rows = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise InferInputError(f'{path}:{n}: not JSON ({e.msg})') from e
      if not isinstance(row, dict):
        raise InferInputError(f'{path}:{n}: expected a JSON object, got {type(row).__name__}')
      row['_where'] = f'{path}:{n}'
      rows.append(row)
  return rows


def prompt_ids(rows: Iterable[Dict[str, Any]], *, vocab_size: int, kind: str,
               encode: Optional[Callable[[str], List[int]]], max_input_length: Optional[int],
               truncate: str = 'error') -> List[List[int]]:
  """Validated prompt ids of each row (module docstring: text vs input_ids, layout, errors)."""
  if truncate not in TRUNCATE:
    raise InferInputError(f'truncate must be one of {TRUNCATE}, got {truncate!r}')
  out = []
  for i, row in enumerate(rows):
    where = row.get('_where', f'input {i}')
    has_text, has_ids = 'text' in row, 'input_ids' in row
    if has_text == has_ids:
      raise InferInputError(f'{where}: needs exactly one of "text" or "input_ids"')
    if has_ids:
      ids = row['input_ids']
      if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                              for t in ids):
        raise InferInputError(f'{where}: input_ids must be a list of ints')
      bad = [t for t in ids if not 0 <= t < vocab_size]
      if bad:
        raise InferInputError(f'{where}: input_ids {bad[0]} outside the vocabulary '
                              f'[0, {vocab_size})')
    else:
      if not isinstance(row['text'], str):
        raise InferInputError(f'{where}: text must be a string')
      if encode is None:
        raise InferInputError(f'{where}: a "text" input needs a vocabulary (VOCABULARY_PATH), or '
                              'give "input_ids"')
      ids = list(encode(row['text'])) if row['text'] else []
      if ids:
        ids = [BOS_ID] + ids if kind == 'hf' else ids + [EOS_ID]
    if not ids:
      raise InferInputError(f'{where}: empty prompt')
    if max_input_length is not None and len(ids) > max_input_length:
      if truncate == 'error':
        raise InferInputError(f'{where}: prompt of {len(ids)} tokens > MAX_INPUT_LENGTH='
                              f'{max_input_length} (or set TRUNCATE = \'left\')')
      ids = ids[-max_input_length:]
    out.append(ids)
  return out


def complete_lines(path: str) -> int:
  """Complete lines already in `path` (a partial last line is cut off, so a rerun rewrites it)."""
  if not os.path.exists(path):
    return 0
  with open(path, 'rb') as f:
    data = f.read()
  keep = data.rfind(b'\n') + 1
  if keep != len(data):
    with open(path, 'r+b') as f:
      f.truncate(keep)
  return data[:keep].count(b'\n')


def _batch(config, kind, ids_list, width, batch_size, prefix_lm):
  """Right-padded prompt rows [batch_size, width'] in the model's layout, lengths, bidirectional."""
  encdec = isinstance(config, EncoderDecoderConfig)
  lead = 1 if (kind == 'trainer' and not encdec) else 0
  tokens = np.zeros((batch_size, width + lead), np.int32)
  lengths = np.ones(batch_size, np.int32)
  for b, ids in enumerate(ids_list):
    tokens[b, lead:lead + len(ids)] = ids
    lengths[b] = len(ids) + lead
  for b in range(len(ids_list), batch_size):  # filler rows keep the compiled shape
    tokens[b, lead] = 1
    lengths[b] = 1 + lead
  return tokens, lengths, bool(prefix_lm and lead)


def infer(*, checkpoint_path: str, output_file: str, input_file: Optional[str] = None,
          mixture_or_task_name: Optional[str] = None, split: str = 'validation',
          decode_method: str = 'greedy', max_decode_length: int = 64, num_beams: int = 4,
          length_penalty: float = 0.6, temperature: float = 1.0, top_k: Optional[int] = None,
          top_p: Optional[float] = None, seed: int = 0, batch_size: int = 8,
          max_input_length: Optional[int] = None, truncate: str = 'error',
          prefix_lm: bool = True, decoder_start_id: Optional[int] = None,
          vocabulary_path: Optional[str] = None, load_vocabulary: Optional[Callable] = None,
          read_task: Optional[Callable] = None, partitioner=None, log=None) -> Dict[str, Any]:
  """Generates for every input; returns the summary (also printed). See the module docstring.

  `partitioner` (`trainer.training.partitioning.Partitioner`; gin/runs/infer.gin's mesh): params
  are placed once by its rules and each batch is sharded over ('data', 'fsdp'); `batch_size` is
  rounded up to a multiple of data x fsdp. None: one device, plain jit.

  `load_vocabulary(path)` -> object with encode(str) / decode(ids) and `read_task(name, split)` ->
  iterable of input id lists are injected by the entry point (they need seqio); `vocabulary_path`
  None means no text in or out.
  """
  log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
  sampling.check_params(method=decode_method, temperature=temperature, top_k=top_k, top_p=top_p,
                        num_beams=num_beams)
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'BATCH_SIZE must be a positive int, got {batch_size!r}')
  if partitioner is not None and batch_size % partitioner.data_parallel_size:
    rounded = placement.padded_rows(batch_size, partitioner)
    log(f'infer: BATCH_SIZE={batch_size} rounded up to {rounded}, a multiple of the mesh\'s '
        f'data x fsdp = {partitioner.data_parallel_size}')
    batch_size = rounded
  if (input_file is None) == (mixture_or_task_name is None):
    raise ValueError('give exactly one of INPUT_FILE or MIXTURE_OR_TASK_NAME')
  model = load_model(checkpoint_path)
  config, kind = model['config'], model['kind']
  vocab = load_vocabulary(vocabulary_path) if vocabulary_path else None
  if input_file is not None:
    rows = read_jsonl(input_file)
  else:
    if read_task is None:
      raise ValueError('MIXTURE_OR_TASK_NAME needs the entry point (python -m trainer.infer)')
    rows = [{'input_ids': [int(t) for t in ids], '_where': f'{mixture_or_task_name}:{split}:{i}'}
            for i, ids in enumerate(read_task(mixture_or_task_name, split))]
  ids = prompt_ids(rows, vocab_size=_vocab_size(config), kind=kind,
                   encode=vocab.encode if vocab is not None else None,
                   max_input_length=max_input_length, truncate=truncate)
  width = max([len(x) for x in ids] + [1])
  # Multi-host: every process decodes its shard of each batch (outputs come back replicated);
  # process 0 alone writes, and every process resumes from the lines process 0 sees.
  writer = jax.process_index() == 0
  done = complete_lines(output_file) if writer else 0
  if jax.process_count() > 1:
    done = int(multihost_utils.broadcast_one_to_all(np.int32(done)))
  if done > len(ids):
    raise ValueError(f'OUTPUT_FILE={output_file} has {done} lines but there are {len(ids)} inputs '
                     '(another run\'s output?)')
  if done:
    log(f'infer: {output_file} has {done} complete lines; continuing from input {done}')
  start_id = model['decoder_start_id'] if decoder_start_id is None else decoder_start_id
  params = model['params']
  if partitioner is not None:  # placed once, reused by every batch
    params = placement.put_params(partitioner=partitioner, config=config, params=params)
  gen_kwargs = dict(config=config, params=params, max_decode_length=max_decode_length,
                    method=decode_method, temperature=temperature, top_k=top_k, top_p=top_p,
                    seed=seed, num_beams=num_beams, length_penalty=length_penalty,
                    decoder_start_id=start_id, partitioner=partitioner)
  t0 = time.perf_counter()
  ttft = None
  generated = 0
  if writer:
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
  with open(output_file if writer else os.devnull, 'a', encoding='utf-8') as out:
    for first in range(done, len(ids), batch_size):
      chunk = ids[first:first + batch_size]
      tokens, lengths, bidirectional = _batch(config, kind, chunk, width, batch_size, prefix_lm)
      if ttft is None:  # time to first token: prefill + one token, after compiling it
        one = dict(gen_kwargs, max_decode_length=1)
        decoding.generate(prompt_tokens=tokens, prompt_lengths=lengths,
                          bidirectional_prompt=bidirectional, **one)
        t1 = time.perf_counter()
        decoding.generate(prompt_tokens=tokens, prompt_lengths=lengths,
                          bidirectional_prompt=bidirectional, **one)
        ttft = time.perf_counter() - t1
        t0 += time.perf_counter() - t1
      result = decoding.generate(prompt_tokens=tokens, prompt_lengths=lengths,
                                 bidirectional_prompt=bidirectional,
                                 example_ids=np.arange(first, first + batch_size), **gen_kwargs)
      for b in range(len(chunk)):
        out_ids = result.tokens[b, :result.lengths[b]].tolist()
        generated += len(out_ids)
        line = {'output_ids': out_ids, 'score': round(float(result.scores[b]), 6)}
        if vocab is not None:
          line['text'] = vocab.decode([t for t in out_ids if t != EOS_ID])
        out.write(json.dumps(line) + '\n')
      out.flush()
      n = first + len(chunk) - done
      elapsed = time.perf_counter() - t0
      log(f'infer: {first + len(chunk)}/{len(ids)} examples  {n / elapsed:.2f} examples/s  '
          f'{generated / elapsed:.1f} generated tokens/s')
  elapsed = time.perf_counter() - t0
  n = len(ids) - done
  summary = {'examples': n, 'resumed_after': done, 'generated_tokens': generated,
             'seconds': round(elapsed, 3),
             'examples_per_s': round(n / elapsed, 3) if n else 0.0,
             'generated_tokens_per_s': round(generated / elapsed, 3) if n else 0.0,
             'time_to_first_token_s': None if ttft is None else round(ttft, 4),
             'decode_method': decode_method, 'output_file': output_file}
  log('infer: summary ' + json.dumps(summary))
  return summary
