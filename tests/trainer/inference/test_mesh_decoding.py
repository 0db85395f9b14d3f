"""Decoding under a 2x2 (data, fsdp) mesh of fake CPU devices equals one device's.

Tiny random decoder-only (Gemma 2, sliding window 3, GQA; PrefixLM prompt) and encoder-decoder
(T5Gemma) models; greedy and 4-beam search (and seeded sampling for the decoder-only one) over 4
fake CPU devices (a subprocess: XLA flags are read at JAX import). A batch of 3 rows is padded to 4
(one per data-parallel shard) and cut back. `trainer.inference.infer` under the same mesh writes the
same ids.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
from jax.sharding import PartitionSpec as P

REPO = str(pathlib.Path(__file__).resolve().parents[3])

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax.core import meta
    from trainer.checkpoint import checkpoints
    from trainer.inference import decoding, infer, placement
    from trainer.model import config_io
    from trainer.model.config import EncoderDecoderConfig, TransformerConfig
    from trainer.model.transformer import Decoder, EncoderDecoder
    from trainer.training import partitioning

    def config(**kw):
      fields = dict(vocab_size=48, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, mlp_dim=48, query_pre_attn_scalar=8, sliding_window=3)
      fields.update(kw)
      return TransformerConfig(**fields)

    def randomise(params, seed):
      # Little noise on the embeddings, and pad id 0 never wins: rows decode to different ids.
      rng = np.random.RandomState(seed)
      def one(path, x):
        scale = 0.02 if 'embedding' in jax.tree_util.keystr(path) else 0.6
        return np.asarray(x) + scale * rng.randn(*x.shape).astype(np.float32)
      params = jax.tree_util.tree_map_with_path(one, meta.unbox(params))
      (params['decoder'] if 'decoder' in params else params)['embedder']['embedding'][0] = 0.0
      return params

    one = jnp.ones((1, 4), jnp.int32)
    dec = config()
    encdec = EncoderDecoderConfig(encoder=config(embed_dim=24), decoder=config())
    models = {
        'decoder': (dec, randomise(Decoder(dec).init(jax.random.PRNGKey(0), one)['params'], 1)),
        'encdec': (encdec, randomise(EncoderDecoder(encdec).init(
            jax.random.PRNGKey(0), one, one)['params'], 1)),
    }
    # Encoder inputs (0 = padding), and the decoder-only prompts in a trainer checkpoint's PrefixLM
    # layout (start id 0 first, bidirectional), which `infer` builds from the same input ids.
    inputs = [[5, 9, 14, 3, 22], [7, 8], [30, 2, 11]]
    encoder_tokens = np.array([x + [0] * (5 - len(x)) for x in inputs], np.int32)
    prefix = np.array([[0] + x + [0] * (4 - len(x)) for x in [x[:4] for x in inputs]], np.int32)
    prompts = {'decoder': (prefix, (prefix[:, 1:] != 0).sum(1) + 1, True),
               'encdec': (encoder_tokens, None, False)}
    mesh = partitioning.Partitioner(mesh_config=partitioning.MeshConfig(data=2, fsdp=2, tensor=1))
    out = {'devices': jax.device_count(), 'mesh': dict(mesh.mesh.shape)}
    for name, (cfg, params) in models.items():
      placed = placement.put_params(partitioner=mesh, config=cfg, params=params)
      emb = (placed if name == 'decoder' else placed['decoder'])['embedder']['embedding']
      out[name + '_embedding_spec'] = str(emb.sharding.spec)
      out[name + '_embedding_shards'] = len({str(s.index) for s in emb.addressable_shards})
      tokens, lengths, bidirectional = prompts[name]
      for method in ('greedy', 'beam') + (('sample',) if name == 'decoder' else ()):
        kw = dict(config=cfg, prompt_tokens=tokens, prompt_lengths=lengths, max_decode_length=6,
                  method=method, num_beams=4, eos_id=-1, bidirectional_prompt=bidirectional)
        if method == 'sample':
          kw.update(temperature=2.0, seed=5)
        single = decoding.generate(params=params, **kw)
        sharded = decoding.generate(params=placed, partitioner=mesh, **kw)
        out[f'{name}_{method}'] = {'one': single.tokens.tolist(), 'mesh': sharded.tokens.tolist(),
                                   'one_scores': single.scores.tolist(),
                                   'mesh_scores': sharded.scores.tolist()}
    # trainer.infer's library under the mesh: a trainer checkpoint, BATCH_SIZE 3 rounded up to 4.
    ckpt = os.path.join(sys.argv[1], 'ckpt')
    checkpoints.save_params(ckpt, models['decoder'][1])
    config_io.write_model_config(dec, ckpt)
    in_file, out_file = os.path.join(sys.argv[1], 'in.jsonl'), os.path.join(sys.argv[1], 'o.jsonl')
    with open(in_file, 'w') as f:
      f.write(''.join(json.dumps({'input_ids': x[:4]}) + '\\n' for x in inputs))
    logged = []
    infer.infer(checkpoint_path=ckpt, input_file=in_file, output_file=out_file, batch_size=3,
                max_decode_length=6, partitioner=mesh, log=logged.append)
    out['infer'] = [json.loads(l)['output_ids'] for l in open(out_file)]
    out['infer_log'] = logged[0]
    batch = placement.put_batch(partitioner=mesh, arrays=[np.zeros((4, 5), np.int32)])[0]
    out['batch_spec'] = str(batch.sharding.spec)
    out['batch_rows_per_device'] = sorted({s.data.shape[0] for s in batch.addressable_shards})
    print('RESULT ' + json.dumps(out))
''')


def test_greedy_and_beam_under_a_2x2_mesh_equal_one_device(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=4',
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')])),
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(),
                                                    'gemma_adapt_test_jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  proc = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                        timeout=600, cwd=REPO)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = json.loads(lines[-1][len('RESULT '):])
  assert out['devices'] == 4 and out['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 1}
  # Params really are sharded (embedding [vocab, embed]: embed over fsdp) and so is the batch.
  for name in ('decoder', 'encdec'):
    assert out[name + '_embedding_spec'] == str(P('tensor', 'fsdp'))
    assert out[name + '_embedding_shards'] == 2
  assert out['batch_spec'] == str(P(('data', 'fsdp'), None))
  assert out['batch_rows_per_device'] == [1]
  for key in ('decoder_greedy', 'decoder_beam', 'decoder_sample', 'encdec_greedy', 'encdec_beam'):
    got = out[key]
    assert got['mesh'] == got['one'], key
    np.testing.assert_allclose(got['mesh_scores'], got['one_scores'], rtol=1e-4, atol=1e-4)
    # A control that the rows decode to different ids (a mixed-up batch would show).
    assert len(got['one']) == 3 and len({tuple(r) for r in got['one']}) >= 2, key
  # Sampling (seeded per example) differs from greedy here, and still matches across layouts.
  assert out['decoder_sample']['one'] != out['decoder_greedy']['one']
  # trainer.infer under the same mesh writes the same ids (EOS -1 there is 1; none was produced).
  assert 'BATCH_SIZE=3 rounded up to 4' in out['infer_log']
  assert all(1 not in row for row in out['decoder_greedy']['one'])
  assert out['infer'] == out['decoder_greedy']['one']
