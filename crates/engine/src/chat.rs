//! Chat templates: the Jinja template stored in the GGUF, rendered with minijinja.

use minijinja::{Environment, Error as JinjaError, ErrorKind, context};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    #[error("chat template: {0}")]
    Render(String),
}

/// Renders `template` (a Hugging Face-style chat template) for `messages`, ending with the
/// assistant's turn opened (`add_generation_prompt = true`).
pub fn render(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| TemplateError::Render(e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| TemplateError::Render(e.to_string()))?;
    let msgs: Vec<minijinja::Value> = messages
        .iter()
        .map(|m| context! { role => m.role.clone(), content => m.content.clone() })
        .collect();
    tmpl.render(context! {
        messages => msgs,
        add_generation_prompt => true,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| TemplateError::Render(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_with_default_system_message() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let s = render(t, &[Message::user("Hi")], "", "").unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn template_errors_are_values() {
        assert!(render("{{ raise_exception('no') }}", &[], "", "").is_err());
        assert!(render("{% if %}", &[], "", "").is_err());
    }
}
