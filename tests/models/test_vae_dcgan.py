import pytest
import torch

from models.families.classifier import Classifier, ClassifierConfig
from models.families.dcgan import DCGAN, DCGANConfig
from models.families.discretized_logistic import discretized_logistic_log_prob
from models.families.vae import VAE, VAEConfig


def test_discretized_logistic_is_a_distribution_over_the_256_levels():
    levels = torch.arange(256, dtype=torch.double) / 255
    for mean, log_scale in [(0.0, -3.0), (0.4, -5.0), (1.0, -1.0), (0.73, -7.0)]:
        logp = discretized_logistic_log_prob(levels, torch.tensor(mean, dtype=torch.double),
                                             torch.tensor(log_scale, dtype=torch.double))
        assert torch.isfinite(logp).all()
        assert abs(float(logp.exp().sum()) - 1) < 1e-9
        assert int(logp.argmax()) == round(min(max(mean, 0), 1) * 255)


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
def test_vae_shapes_ranges_and_a_proper_bound(image_shape):
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_shape=image_shape, latent_dim=8, width=8, hidden=32)).eval()
    x = (torch.rand(4, *image_shape) * 255).round() / 255
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (4, 8)
    images = model.decode(mu)
    assert images.shape == (4, *image_shape) and images.min() >= 0 and images.max() <= 1
    terms = model.elbo(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(terms["elbo"], terms["reconstruction"] - terms["kl"])
    assert (terms["kl"] >= 0).all() and (terms["reconstruction"] < 0).all()
    again = model.elbo(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(terms["elbo"], again["elbo"])


@pytest.mark.parametrize("family", [VAE, DCGAN])
def test_same_seed_same_samples(family):
    torch.manual_seed(0)
    model = family(family.Config()).eval()
    a = model.sample_for_seeds([1, 2, 3])
    b = model.sample_for_seeds([1, 2, 3])
    c = model.sample_for_seeds([4, 5, 6])
    assert torch.equal(a, b) and not torch.equal(a, c)
    z = model.latents_for_seeds([1, 2, 3])
    assert z.shape == (3, model.latent_dim) and torch.equal(model.decode(z), a)
    # A seed's image, alone or not (to float rounding: the batch changes the kernels' sums).
    torch.testing.assert_close(model.sample_for_seeds([2]), a[1:2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32), (1, 64, 48)])
def test_dcgan_shapes_and_ranges(image_shape):
    model = DCGAN(DCGANConfig(image_shape=image_shape, generator_width=8, discriminator_width=8)).eval()
    images = model.sample_for_seeds([0, 1])
    assert images.shape == (2, *image_shape) and images.min() >= 0 and images.max() <= 1
    assert model.discriminator(images).shape == (2,)


@pytest.mark.parametrize("side, stages", [(28, 2), (32, 3), (64, 4)])
def test_one_more_resolution_stage_per_doubling(side, stages):
    """28x28 keeps the shipped layout (7x7 in two stages); 32 and 64 start from 4x4, not from a
    large first map that a dense projection would have to fill."""
    dcgan = DCGAN(DCGANConfig(image_shape=(3, side, side), generator_width=4, discriminator_width=4))
    vae = VAE(VAEConfig(image_shape=(3, side, side), width=4, hidden=8, latent_dim=2))
    upsamplers = [m for m in dcgan.generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(upsamplers) == stages + 1  # the projection to the first map, then one per stage
    assert upsamplers[0].kernel_size == (side >> stages,) * 2
    halvings = [m for m in dcgan.discriminator.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(halvings) == stages
    assert vae.feature_shape == (4 * 2 ** (stages - 1), side >> stages, side >> stages)


def test_sizes_that_are_not_multiples_of_4_are_refused():
    with pytest.raises(ValueError, match="multiples of 4"):
        DCGANConfig(image_shape=(1, 30, 28))
    with pytest.raises(ValueError, match="multiples of 4"):
        VAEConfig(image_shape=(1, 28, 30))
    with pytest.raises(ValueError, match="at least 16"):
        DCGANConfig(image_shape=(1, 12, 12))


def test_classifier_features_and_logits():
    model = Classifier(ClassifierConfig()).eval()
    x = torch.rand(5, 1, 28, 28)
    assert model.features(x).shape == (5, 128) and model(x).shape == (5, 10)


def test_slerp_keeps_the_ends_and_the_norm_of_orthogonal_latents():
    from models.families.latent import lerp, slerp
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    path = slerp(a, b, torch.linspace(0, 1, 5))
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path.norm(dim=1), torch.full((5,), 3.0))
    assert lerp(a, b, torch.tensor([0.5])).norm() < 3.0
    torch.testing.assert_close(slerp(a, 2 * a, torch.tensor([0.5])), lerp(a, 2 * a, torch.tensor([0.5])))


def conditional_dcgan(n_classes=3, class_dim=4) -> DCGAN:
    torch.manual_seed(0)
    config = DCGANConfig(image_shape=(3, 32, 32), latent_dim=12, generator_width=8, discriminator_width=8,
                         n_classes=n_classes, class_dim=class_dim)
    return DCGAN(config).eval()


def test_a_conditional_dcgan_latent_is_noise_then_a_class_embedding():
    model = conditional_dcgan()
    model.class_prior.copy_(torch.tensor([0.0, 0.0, 1.0]))  # every draw is class 2
    z = model.latents_for_seeds(range(6))
    assert z.shape == (6, 12)
    assert torch.equal(z[:, 8:], model.class_codes()[2].expand(6, 4))
    assert torch.equal(model.latents_for_seeds(range(6)), z) and not torch.equal(z[0], z[1])
    # The latent decodes alone to what the generator makes of (noise, label): nothing is lost.
    torch.testing.assert_close(model.decode(z), (model.generator(z[:, :8], torch.full((6,), 2)) + 1) / 2)
    model.class_prior.copy_(torch.tensor([0.5, 0.5, 0.0]))
    drawn = model.latents_for_seeds(range(200))[:, 8:]
    hits = [(drawn == code).all(1).sum().item() for code in model.class_codes()]
    assert hits[2] == 0 and hits[0] > 60 and hits[1] > 60 and sum(hits) == 200


def test_a_conditional_dcgan_declares_its_class_latents_and_counts_its_prior():
    model = conditional_dcgan()
    declared = model.declared_class_latents()
    assert len(declared) == 3
    for (mean, std), code in zip(declared, model.class_codes()):
        assert torch.equal(mean, torch.cat([torch.zeros(8), code]))
        assert torch.equal(std, torch.cat([torch.ones(8), torch.zeros(4)]))
    fitted = model.fit_after_training(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1, 1, 1]))
    assert fitted["class_prior"] == [0.25, 0.75, 0.0]
    assert DCGAN(DCGANConfig()).declared_class_latents() is None


def test_the_projection_discriminator_scores_the_label():
    model = conditional_dcgan()
    images = model.sample_for_seeds([0, 1])
    labels = torch.tensor([0, 1])
    # The projection starts at zero: at first the label changes nothing ...
    assert torch.equal(model.discriminator(images, labels), model.discriminator(images))
    torch.nn.init.normal_(model.discriminator.class_embedding.weight)
    # ... and once learnt, it does.
    assert not torch.allclose(model.discriminator(images, labels), model.discriminator(images, labels.flip(0)))


def test_the_unconditional_game_draws_its_noise_as_before():
    """The fakes' noise is what GANTrainer drew before the conditional mode, so an unconditional
    run from the same seed is the same run."""
    model = DCGAN(DCGANConfig())
    z, labels = model.adversarial_inputs(torch.zeros(5, dtype=torch.long), torch.Generator().manual_seed(3))
    assert labels is None and torch.equal(z, torch.randn(5, 100, generator=torch.Generator().manual_seed(3)))
    conditional = conditional_dcgan()
    y = torch.tensor([2, 0, 1])
    z, labels = conditional.adversarial_inputs(y, torch.Generator().manual_seed(3))
    assert z.shape == (3, 8) and torch.equal(labels, y)


def test_a_class_dim_that_leaves_no_noise_is_refused():
    with pytest.raises(ValueError, match="class_dim"):
        DCGANConfig(latent_dim=16, n_classes=3, class_dim=16)
