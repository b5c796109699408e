"""The pickers list checkpoints and diffusers folders, and VAEs, under the models folder."""

from safetensors.torch import save_file

from helpers import a1111_vae_state, tiny_components
from traintrain.models.discovery import list_models, list_vaes, resolve_listed
from traintrain.models.tiny import write_tiny_model


def test_single_files_and_diffusers_folders(tmp_path):
    single = write_tiny_model("sd1", "single-file", tmp_path / "sd1" / "tiny.safetensors")
    folder = write_tiny_model("sd1", "diffusers", tmp_path / "diffusers" / "tiny")
    (tmp_path / "old.ckpt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.safetensors").write_bytes(b"")
    assert list_models(tmp_path) == sorted([str(single), str(folder), str(tmp_path / "old.ckpt")])


def test_no_folder_lists_nothing(tmp_path):
    assert list_models(None) == [] and list_models(tmp_path / "missing") == []
    assert list_vaes(None) == [] and list_vaes(tmp_path / "missing") == []


def webui_models_folder(root):
    """A Web-UI's models/: checkpoints with a *.vae.pt beside one, VAE/, Lora/, embeddings/."""
    checkpoint = write_tiny_model("sd1", "single-file", root / "Stable-diffusion" / "tiny.safetensors")
    diffusers = write_tiny_model("sd1", "diffusers", root / "Stable-diffusion" / "tiny-diffusers")
    vae = tiny_components(seed=0).vae
    files = {"beside": root / "Stable-diffusion" / "tiny.vae.pt", "a1111": root / "VAE" / "vae-ft-mse.safetensors",
             "nested": root / "VAE" / "sdxl" / "fix.ckpt"}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    save_file(a1111_vae_state(vae), str(files["a1111"]))
    vae.save_pretrained(str(root / "VAE" / "diffusers-vae"))
    for folder, name in (("Lora", "style.safetensors"), ("embeddings", "word.safetensors"), ("LyCORIS", "x.ckpt")):
        (root / folder).mkdir()
        (root / folder / name).write_bytes(b"")
    return checkpoint, diffusers, files


def test_a_webui_models_folder_lists_its_checkpoints_without_loras_vaes_or_embeddings(tmp_path):
    checkpoint, diffusers, _ = webui_models_folder(tmp_path)
    assert list_models(tmp_path) == sorted([str(checkpoint), str(diffusers)])


def test_vaes_are_found_as_the_webuis_vae_dropdown_finds_them(tmp_path):
    _, _, files = webui_models_folder(tmp_path)
    expected = [*map(str, files.values()), str(tmp_path / "VAE" / "diffusers-vae")]
    assert list_vaes(tmp_path) == sorted(expected)  # not the diffusers model's own vae/ folder


def test_a_bare_name_from_an_original_preset_becomes_the_listed_path(tmp_path):
    _, _, files = webui_models_folder(tmp_path)
    listed = list_vaes(tmp_path)
    assert resolve_listed("vae-ft-mse.safetensors", listed) == str(files["a1111"])
    assert resolve_listed(str(files["nested"]), listed) == str(files["nested"])  # a path stays
    assert resolve_listed("unknown.safetensors", listed) == "unknown.safetensors"  # check_inputs names it
    assert resolve_listed("", listed) == ""
