import jax
import pytest

# Implicit rank promotion hides shape bugs; fail loudly instead (as Equinox's tests do).
jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.fixture
def rng():
  return jax.random.key(0)
