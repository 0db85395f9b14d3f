"""Dataflow staging, offline: the requirements are the pinned run-time closure (t5 not among them:
it is installed --no-deps by the staged setup.py), the staged package holds tasks/ and pipelines/,
and Beam's own stager turns the options into job resources."""
import importlib.metadata as md
import tarfile

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions
from apache_beam.runners.portability import stager

from pipelines.cache import dataflow


def test_pinned_requirements_are_the_installed_closure():
  reqs = dataflow.pinned_requirements()
  by_name = {r.split("==")[0].lower(): r.split("==")[1] for r in reqs}
  assert all("==" in r for r in reqs)
  for name in ("seqio-nightly", "tensorflow", "tensorflow-text", "sentencepiece", "tfds-nightly",
               "mesh-tensorflow", "gin-config", "numpy"):
    assert by_name[name] == md.version(name), name
  # The traps of pyproject.toml: no second tensorflow_datasets/seqio distribution, no t5 deps.
  for name in ("tensorflow-datasets", "seqio", "t5", "apache-beam", "gemma-adapt", "pytest",
               "torch"):
    assert name not in by_name, name


def test_staging_options_make_job_resources(tmp_path):
  logs = []
  args = dataflow.staging_options(staging_dir=str(tmp_path / "stage"), log=logs.append)
  setup_file = tmp_path / "stage" / "setup.py"
  assert args == [f"--setup_file={setup_file}",
                  f"--requirements_file={tmp_path / 'stage' / 'requirements.txt'}"]
  text = setup_file.read_text()
  assert f"t5=={md.version('t5')}" in text and '"--no-deps"' in text
  options = PipelineOptions(["--runner=DataflowRunner", "--project=p", "--region=r",
                             "--temp_location=gs://bucket/tmp", "--requirements_cache=skip",
                             *args])
  assert options.view_as(SetupOptions).setup_file == str(setup_file)
  # Beam's stager, as the DataflowRunner calls it before uploading (offline: no cache download).
  staging = tmp_path / "resources"
  staging.mkdir()
  resources = stager.Stager.create_job_resources(options, str(staging),
                                                 log_submission_env_dependencies=False)
  staged_as = [r.role_payload for r in resources]  # ArtifactStagingToRolePayload bytes.
  assert any(p.endswith(b"requirements.txt") for p in staged_as)
  assert any(p.endswith(b"workflow.tar.gz") for p in staged_as)
  sdist = next(p for p in staging.rglob("*.tar.gz"))
  members = tarfile.open(sdist).getnames()
  for path in ("tasks/sources.py", "tasks/__init__.py", "pipelines/cache_tasks.py",
               "pipelines/cache/unit_processor.py", "setup.py"):
    assert any(m.endswith(path) for m in members), path
